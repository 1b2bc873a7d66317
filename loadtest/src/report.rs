//! Results on disk: `results.json` (machine-readable), `summary.md` (for
//! humans and docs), and `latency.png` (the latency distribution).

use std::path::Path;

use anyhow::Result;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

pub fn write_json<T: Serialize>(dir: &Path, result: &T) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(result)?)?;
    Ok(())
}

pub fn write_markdown(dir: &Path, text: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("summary.md"), text)?;
    Ok(())
}

/// Fonts looked for (in this order) to label the plot; without one the plot
/// is drawn unlabelled.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn load_font() -> bool {
    for path in FONTS {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

/// The percentile spectrum: latency (ms) against "nines" (1 / (1 − q)) on a
/// log axis, the usual way to show a latency distribution's tail.
pub fn write_latency_png(dir: &Path, title: &str, h: &Histogram<u64>) -> Result<()> {
    if h.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let labelled = load_font();
    let path = dir.join("latency.png");
    let root = BitMapBackend::new(&path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let points: Vec<(f64, f64)> = [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999]
        .iter()
        .map(|&q| (1.0 / (1.0 - q), h.value_at_quantile(q) as f64 / 1000.0))
        .chain(std::iter::once((1e5, h.max() as f64 / 1000.0)))
        .collect();
    let ymax = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.1 + 0.001;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if labelled {
        builder.caption(title, ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d((1.0f64..1e5f64).log_scale(), 0.0..ymax)?;
    if labelled {
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| format!("{:.3}%", 100.0 * (1.0 - 1.0 / x)))
            .draw()?;
    }
    chart.draw_series(LineSeries::new(points.clone(), &BLUE))?;
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
    root.present()?;
    Ok(())
}

/// (deliveries per second, p99 ms) of every fan-out `results.json` in the
/// subdirectories of `dir`, by rate; runs that lost messages are left out.
pub fn saturation_points(dir: &Path) -> Result<Vec<(f64, f64)>> {
    let mut points = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path().join("results.json");
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let r: serde_json::Value = serde_json::from_slice(&bytes)?;
        let (Some(rate), Some(p99), lost) =
            (r["delivered_per_sec"].as_f64(), r["latency"]["p99_ms"].as_f64(), r["lost"].as_u64().unwrap_or(0))
        else {
            continue;
        };
        if lost == 0 && rate > 0.0 {
            points.push((rate, p99));
        }
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(points)
}

/// One line per system: p99 (ms, log axis) against deliveries per second,
/// with the acceptable p99 as a dashed line.
pub fn write_saturation_png(path: &Path, series: &[(String, Vec<(f64, f64)>)], limit_ms: f64) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let labelled = load_font();
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let xmax = all.clone().map(|p| p.0).fold(1.0, f64::max) * 1.1;
    let ymax = all.map(|p| p.1).fold(limit_ms, f64::max) * 1.5;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if labelled {
        builder.caption("p99 against load", ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(0.0..xmax, (0.5f64..ymax).log_scale())?;
    if labelled {
        chart.configure_mesh().x_desc("deliveries per second").y_desc("p99 latency (ms)").draw()?;
    }
    let limit = [(0.0, limit_ms), (xmax, limit_ms)];
    chart.draw_series(DashedLineSeries::new(limit, 6, 4, BLACK.into()))?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let drawn = chart.draw_series(LineSeries::new(points.clone(), color))?;
        if labelled {
            drawn.label(name.clone()).legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    if labelled {
        chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}

/// A chaos run over time: deliveries per second above, p99 latency (ms, log
/// axis) below, each fault shaded from its start to its heal and named.
pub fn write_timeline_png(dir: &Path, timeline: &[(u64, f64, usize)], faults: &[(f64, f64, String)]) -> Result<()> {
    if timeline.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let labelled = load_font();
    let path = dir.join("timeline.png");
    let root = BitMapBackend::new(&path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(350);
    let xmax = timeline.len() as f64;
    let rate_max = timeline.iter().map(|t| t.0).max().unwrap_or(1).max(1) as f64 * 1.15;
    let lat_max = timeline.iter().map(|t| t.1).fold(10.0, f64::max) * 2.0;
    let shade = RGBColor(220, 50, 50).mix(0.18);
    let mut rates = ChartBuilder::on(&top);
    rates.margin(15);
    if labelled {
        rates
            .caption("chaos: deliveries and latency against faults", ("sans-serif", 20))
            .x_label_area_size(30)
            .y_label_area_size(60);
    }
    let mut chart = rates.build_cartesian_2d(0.0..xmax, 0.0..rate_max)?;
    if labelled {
        chart.configure_mesh().y_desc("deliveries / s").draw()?;
    }
    chart.draw_series(
        faults.iter().map(|(a, b, _)| Rectangle::new([(*a, 0.0), (b.max(a + 0.5), rate_max)], shade.filled())),
    )?;
    if labelled {
        chart.draw_series(
            faults
                .iter()
                .map(|(a, _, name)| Text::new(name.clone(), (*a, rate_max * 0.97), ("sans-serif", 13).into_font())),
        )?;
    }
    chart.draw_series(LineSeries::new(timeline.iter().enumerate().map(|(i, t)| (i as f64, t.0 as f64)), &BLUE))?;
    let mut lat = ChartBuilder::on(&bottom);
    lat.margin(15);
    if labelled {
        lat.x_label_area_size(35).y_label_area_size(60);
    }
    let mut chart = lat.build_cartesian_2d(0.0..xmax, (1.0f64..lat_max).log_scale())?;
    if labelled {
        chart.configure_mesh().x_desc("seconds").y_desc("p99 latency (ms)").draw()?;
    }
    chart.draw_series(
        faults.iter().map(|(a, b, _)| Rectangle::new([(*a, 1.0), (b.max(a + 0.5), lat_max)], shade.filled())),
    )?;
    let points = timeline.iter().enumerate().filter(|(_, t)| t.1 > 0.0).map(|(i, t)| (i as f64, t.1.max(1.0)));
    chart.draw_series(LineSeries::new(points, &RED))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_all_three_files() {
        let dir = std::env::temp_dir().join(format!("lt-report-{}", std::process::id()));
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in [800, 900, 1000, 1500, 4000] {
            h.record(v).unwrap();
        }
        write_json(&dir, &serde_json::json!({"a": 1})).unwrap();
        write_markdown(&dir, "# hi\n").unwrap();
        write_latency_png(&dir, "test", &h).unwrap();
        for f in ["results.json", "summary.md", "latency.png"] {
            assert!(std::fs::metadata(dir.join(f)).unwrap().len() > 0, "{f}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_saturation_plot_takes_the_runs_that_lost_nothing() {
        let dir = std::env::temp_dir().join(format!("lt-saturation-{}", std::process::id()));
        for (rate, delivered, p99, lost) in
            [(20, 10_000.0, 7.5, 0), (100, 50_000.0, 9.0, 0), (400, 150_000.0, 80.0, 12)]
        {
            let run = json!({"delivered_per_sec": delivered, "latency": {"p99_ms": p99}, "lost": lost});
            write_json(&dir.join(format!("r{rate}")), &run).unwrap();
        }
        let points = saturation_points(&dir).unwrap();
        assert_eq!(points, [(10_000.0, 7.5), (50_000.0, 9.0)]);
        let png = dir.join("saturation.png");
        write_saturation_png(&png, &[("confab".into(), points)], 50.0).unwrap();
        assert!(std::fs::metadata(&png).unwrap().len() > 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_timeline_is_drawn_with_its_faults() {
        let dir = std::env::temp_dir().join(format!("lt-timeline-{}", std::process::id()));
        let timeline: Vec<(u64, f64, usize)> =
            (0..60).map(|i| (if i % 20 < 3 { 0 } else { 40 }, 12.0 + i as f64, 10)).collect();
        write_timeline_png(&dir, &timeline, &[(20.0, 23.5, "kill-node 2".into())]).unwrap();
        assert!(std::fs::metadata(dir.join("timeline.png")).unwrap().len() > 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
