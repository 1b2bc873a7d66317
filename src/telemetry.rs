//! Traces over OTLP/HTTP (docs/adr/0019-traces-over-otlp.md), off unless
//! `--otlp-endpoint` is set.
//!
//! A message's trace runs from its send through seq, store and publish to
//! the fan-out on every node that receives it; the publishing span's W3C
//! trace context crosses the bus in the event's header ([`TraceParent`],
//! `bus::wire`). The spans are `TRACE`-level spans of the target
//! [`TARGET`]: with tracing off, no OpenTelemetry layer is installed and
//! the log filter (`info` unless `CONFAB_LOG` says otherwise) disables
//! them at their call sites, so the hot path does what it did without them.
//! With tracing on, the OpenTelemetry layer takes exactly those spans and
//! the logs stay as they were.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span exported (`tracing::trace_span!(target: TARGET, …)`).
pub const TARGET: &str = "confab::trace";

/// How long an export may take before it is given up, and how long the
/// last one may take at shutdown.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces: the bus carries trace context and
/// the fan-out opens spans only then.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A span's W3C trace context (`traceparent`, version 00): what a bus
/// event carries so that the receiving node's span joins the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Length of the header form: `00-` 32 hex `-` 16 hex `-` 2 hex.
    pub const LEN: usize = 55;

    /// The header form, `00-<trace id>-<span id>-<flags>` in lowercase hex.
    pub fn to_header(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let text = format!("00-{}-{}-{:02x}", hex::encode(self.trace_id), hex::encode(self.span_id), self.flags);
        out.copy_from_slice(text.as_bytes());
        out
    }

    /// Reads the header form; `None` for anything else: another version,
    /// upper-case or non-hex digits, an all-zero trace or span id.
    pub fn parse(raw: &[u8]) -> Option<TraceParent> {
        if raw.len() != Self::LEN || &raw[..3] != b"00-" || raw[35] != b'-' || raw[52] != b'-' {
            return None;
        }
        fn hex_into<const N: usize>(raw: &[u8]) -> Option<[u8; N]> {
            if raw.iter().any(|c| !matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
                return None;
            }
            let mut out = [0u8; N];
            hex::decode_to_slice(raw, &mut out).ok()?;
            Some(out)
        }
        let trace_id: [u8; 16] = hex_into(&raw[3..35])?;
        let span_id: [u8; 8] = hex_into(&raw[36..52])?;
        let [flags]: [u8; 1] = hex_into(&raw[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent { trace_id, span_id, flags })
    }

    /// The trace context of the current span, if it belongs to a trace.
    pub fn current() -> Option<TraceParent> {
        let context = tracing::Span::current().context();
        let span = context.span();
        let cx = span.span_context();
        cx.is_valid().then(|| TraceParent {
            trace_id: cx.trace_id().to_bytes(),
            span_id: cx.span_id().to_bytes(),
            flags: cx.trace_flags().to_u8(),
        })
    }

    /// Makes `span` a child of this (remote) span.
    pub fn adopt(&self, span: &tracing::Span) {
        let remote = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

/// The exporter of a process that traces; [`Traces::shutdown`] sends what
/// is still buffered.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Starts exporting to the collector at `endpoint` (its base URL, as
    /// `http://collector:4318`, or the whole `…/v1/traces` URL) as the
    /// service `confab`, instance `instance`. Spans go out in batches from
    /// the SDK's own thread (`OTEL_BSP_*` tune them), sampled as
    /// `OTEL_TRACES_SAMPLER` says (default: all).
    pub fn start(endpoint: &str, instance: &str) -> Result<Traces, String> {
        use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
        let url = traces_url(endpoint);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(Client::new()?)
            .build()
            .map_err(|e| format!("invalid setting --otlp-endpoint (CONFAB_OTLP_ENDPOINT): `{url}`: {e}"))?;
        let resource = Resource::builder()
            .with_service_name("confab")
            .with_attributes([
                KeyValue::new("service.instance.id", instance.to_string()),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            ])
            .build();
        let provider = SdkTracerProvider::builder().with_resource(resource).with_batch_exporter(exporter).build();
        Ok(Traces { provider })
    }

    /// The layer that hands [`TARGET`]'s spans to the exporter; installing
    /// it turns on trace context on the bus.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer;
        ENABLED.store(true, Ordering::Relaxed);
        let filter = tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE);
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("confab")).with_filter(filter)
    }

    /// Exports the spans still buffered and stops; call it from outside
    /// the node's runtime, after the node stopped (it blocks).
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT) {
            eprintln!("confab: traces: {e}");
        }
    }
}

/// `endpoint` with the traces path, as `OTEL_EXPORTER_OTLP_ENDPOINT` is read.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The exporter's HTTP client: the project's reqwest, on a one-thread
/// runtime of its own, since the SDK exports from a thread outside the
/// node's runtime (and must still export while that one shuts down).
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    fn new() -> Result<Client, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("confab-otlp")
            .enable_all()
            .build()
            .map_err(|e| format!("traces: cannot start the exporter's runtime: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("traces: cannot build the exporter's HTTP client: {e}"))?;
        Ok(Client { http, runtime })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let request = reqwest::Request::try_from(request)?;
        let response = self
            .runtime
            .spawn(async move {
                let response = http.execute(request).await?;
                let mut out = http::Response::builder().status(response.status().as_u16());
                for (name, value) in response.headers() {
                    out = out.header(name.as_str(), value.as_bytes());
                }
                let body = response.bytes().await?;
                Ok::<_, opentelemetry_http::HttpError>(out.body(body)?)
            })
            .await??;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_reads_back_what_it_wrote() {
        let tp = TraceParent { trace_id: [0xab; 16], span_id: [0x01; 8], flags: 1 };
        let header = tp.to_header();
        assert_eq!(&header[..], b"00-abababababababababababababababab-0101010101010101-01");
        assert_eq!(TraceParent::parse(&header), Some(tp));
    }

    #[test]
    fn foreign_traceparents_are_refused() {
        let good = *b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert!(TraceParent::parse(&good).is_some());
        for (at, byte) in [(0, b'f'), (1, b'1'), (2, b'_'), (3, b'A'), (20, b'g'), (35, b'x'), (40, b' '), (53, b'z')] {
            let mut bad = good;
            bad[at] = byte;
            assert_eq!(TraceParent::parse(&bad), None, "byte {at} = {:?}", byte as char);
        }
        assert_eq!(TraceParent::parse(&good[..54]), None);
        assert_eq!(TraceParent::parse(b""), None);
        assert_eq!(TraceParent::parse(b"00-00000000000000000000000000000000-b7ad6b7169203331-01"), None);
        assert_eq!(TraceParent::parse(b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"), None);
        // Multi-byte UTF-8 where hex digits belong must not split a char.
        let mut bad = good.to_vec();
        bad.splice(3..5, "é".bytes());
        assert_eq!(TraceParent::parse(&bad), None);
    }

    #[test]
    fn the_endpoint_gets_the_traces_path_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("https://c/otlp/v1/traces"), "https://c/otlp/v1/traces");
    }
}
