//! The monitoring files in deploy/ speak of metrics Confab has: every
//! `confab_*` series an alert rule or a dashboard panel queries is one the
//! docs list (and the docs' list is what nodes and workers register, see
//! `metrics`), so a renamed metric cannot leave a silent panel or an alert
//! that never fires. `promtool check rules` and `promtool test rules` run
//! in the test command.

use std::collections::BTreeSet;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Every `confab_…` name in `text`, without a histogram's series suffix.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("confab_") {
        let tail = &rest[at..];
        let end =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

fn documented() -> BTreeSet<String> {
    let docs = read("docs/api.md") + &read("docs/operations.md");
    docs.lines()
        .filter(|l| l.starts_with("| `confab_"))
        .filter_map(|l| l.split('`').nth(1))
        .map(|m| m.split('{').next().unwrap().to_string())
        .collect()
}

#[test]
fn alerts_and_the_dashboard_query_documented_metrics() {
    let known = documented();
    assert!(known.len() > 40, "the metric tables were found: {known:?}");
    for file in ["deploy/prometheus/alerts.yml", "deploy/grafana/confab-dashboard.json"] {
        let used = metric_names(&read(file));
        assert!(!used.is_empty(), "{file} queries Confab's metrics");
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(unknown.is_empty(), "{file} queries metrics no table documents: {unknown:?}");
    }
}

#[test]
fn the_dashboard_is_grafana_json_with_a_query_in_every_panel() {
    let dashboard: serde_json::Value = serde_json::from_str(&read("deploy/grafana/confab-dashboard.json")).unwrap();
    assert_eq!(dashboard["uid"], "confab-overview");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(
            !targets.is_empty() && targets.iter().all(|t| t["expr"].as_str().is_some_and(|e| e.contains("confab_")))
        );
    }
}

#[test]
fn names_are_read_whole_and_without_histogram_suffixes() {
    let names = metric_names("rate(confab_a_seconds_bucket[5m]) + confab_b_total{x=\"y\"} confab_c_count");
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["confab_a_seconds", "confab_b_total", "confab_c"]);
}
