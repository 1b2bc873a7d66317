//! Traces over OTLP (docs/operations.md, "Traces"): one message's spans
//! from two `confab serve` processes reach a collector as one trace, the
//! trace context having crossed the bus; a node without the setting sends
//! nothing.

mod common;

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message as _;
use serde_json::json;

use common::{call, register_at, Client, SECRET};

/// One span as the collector got it.
#[derive(Debug, Clone)]
struct Span {
    /// The resource's `service.name` and `service.instance.id`.
    service: String,
    instance: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attributes: HashMap<String, String>,
}

fn strings(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// A small OTLP/HTTP receiver: takes protobuf trace exports on
/// `/v1/traces` and keeps their spans.
#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    requests: Arc<Mutex<usize>>,
}

impl Collector {
    async fn start(&self) -> SocketAddr {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| async move {
                let export = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf trace export");
                *me.requests.lock().unwrap() += 1;
                let mut spans = me.spans.lock().unwrap();
                for resource_spans in export.resource_spans {
                    let resource = strings(&resource_spans.resource.map(|r| r.attributes).unwrap_or_default());
                    for scope in resource_spans.scope_spans {
                        for s in scope.spans {
                            spans.push(Span {
                                service: resource.get("service.name").cloned().unwrap_or_default(),
                                instance: resource.get("service.instance.id").cloned().unwrap_or_default(),
                                name: s.name,
                                trace_id: s.trace_id,
                                span_id: s.span_id,
                                parent: s.parent_span_id,
                                attributes: strings(&s.attributes),
                            });
                        }
                    }
                }
                // An empty ExportTraceServiceResponse: everything accepted.
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// A `confab serve` process; stopped with SIGTERM, as an orchestrator would.
struct Process {
    child: Child,
    addr: SocketAddr,
}

impl Process {
    fn start(db: &str, node_id: &str, env: &[(&str, String)]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs([
                ("CONFAB_REDIS_URL", common::redis_url()),
                ("CONFAB_MONGO_URL", common::mongo_url()),
                ("CONFAB_MONGO_DB", db.to_string()),
                ("CONFAB_KEY_PREFIX", db.to_string()),
                ("CONFAB_JWT_SECRET", SECRET.to_string()),
                ("CONFAB_LISTEN", "127.0.0.1:0".to_string()),
                ("CONFAB_NODE_ID", node_id.to_string()),
                ("CONFAB_LOG_FORMAT", "json".to_string()),
            ])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("confab runs");
        // The address is in the "serving" line; the rest of the output is
        // read on, so the node never blocks on a full pipe.
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        for line in lines.by_ref().take(100) {
            let line = line.unwrap();
            let entry: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if entry["message"] == "confab node serving" {
                addr = entry["addr"].as_str().map(|a| a.parse().unwrap());
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        Process { child, addr: addr.unwrap_or_else(|| panic!("node {node_id} did not say where it serves")) }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn wait_ready(&self, http: &reqwest::Client) {
        for _ in 0..200 {
            if http.get(format!("{}/readyz", self.base())).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {} never became ready", self.addr);
    }

    /// SIGTERM, then waits for a clean exit.
    async fn stop(mut self) {
        let killed = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "the node exits cleanly: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "the node did not stop within 20 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messages_trace_runs_from_the_send_to_the_fan_out_on_another_node() {
    let collector = Collector::default();
    let endpoint = format!("http://{}", collector.start().await);
    let db = common::unique_db();
    let (id_a, id_b, id_c) = ("otlp-a", "otlp-b", "otlp-c");
    // A sends its batches at once; B only when it stops, so B's spans
    // arrive only if shutdown flushes them.
    let a = Process::start(
        &db,
        id_a,
        &[("CONFAB_OTLP_ENDPOINT", endpoint.clone()), ("OTEL_BSP_SCHEDULE_DELAY", "100".into())],
    );
    let b = Process::start(
        &db,
        id_b,
        &[("CONFAB_OTLP_ENDPOINT", endpoint.clone()), ("OTEL_BSP_SCHEDULE_DELAY", "600000".into())],
    );
    // No setting: even the standard OpenTelemetry variable pointing at the
    // collector must not make it send anything.
    let c = Process::start(&db, id_c, &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone())]);
    let http = reqwest::Client::new();
    for node in [&a, &b, &c] {
        node.wait_ready(&http).await;
    }

    let alice = register_at(&http, &a.base(), "alice").await;
    let bob = register_at(&http, &b.base(), "bob").await;
    let carol = register_at(&http, &c.base(), "carol").await;
    let (status, room) = call(
        &http,
        &format!("{}/rooms", a.base()),
        "POST",
        Some(&alice.token),
        Some(json!({"name": "t", "type": "public"})),
    )
    .await;
    assert_eq!(status, 201, "{room}");
    let room = room["id"].as_str().unwrap().to_string();
    let mut on_a = Client::connect(&format!("ws://{}/ws?token={}", a.addr, alice.token)).await;
    on_a.join(&room).await;
    let mut on_b = Client::connect(&format!("ws://{}/ws?token={}", b.addr, bob.token)).await;
    on_b.join(&room).await;
    let mut on_c = Client::connect(&format!("ws://{}/ws?token={}", c.addr, carol.token)).await;
    on_c.join(&room).await;

    let (status, sent) = call(
        &http,
        &format!("{}/messages", a.base()),
        "POST",
        Some(&alice.token),
        Some(json!({"room_id": room, "content": "traced"})),
    )
    .await;
    assert_eq!(status, 201, "{sent}");
    let message_id = sent["id"].as_str().unwrap().to_string();
    let got = on_b.recv_type("message").await;
    assert_eq!(got["data"]["id"], message_id.as_str());
    // A node that does not trace reads a traced event all the same.
    let got = on_c.recv_type("message").await;
    assert_eq!(got["data"]["id"], message_id.as_str());
    // And back, from B's socket to A's.
    let reply_id = on_b.say(&room, "reply").await["id"].as_str().unwrap().to_string();
    for client in [&mut on_a, &mut on_c] {
        while client.recv_type("message").await["data"]["id"] != reply_id.as_str() {}
    }
    drop((on_a, on_b, on_c));

    // A exports on its own within its batch delay; B has not yet.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !collector.spans().iter().any(|s| s.instance == id_a && s.name == "bus.publish") {
        assert!(Instant::now() < deadline, "A's spans never came: {:?}", collector.spans());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(collector.spans().iter().all(|s| s.instance == id_a), "B holds its spans until it stops");

    for node in [a, b, c] {
        node.stop().await;
    }
    let spans = collector.spans();
    let of_message = |id: &String, instance: &str, name: &str| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| s.instance == instance && s.name == name)
            .filter(|s| s.attributes.get("confab.message_id") == Some(id))
            .cloned()
            .collect()
    };
    let of = |instance: &str, name: &str| of_message(&message_id, instance, name);
    let names: Vec<(String, String)> = spans.iter().map(|s| (s.instance.clone(), s.name.clone())).collect();
    assert!(spans.iter().all(|s| s.service == "confab"), "{names:?}");
    assert!(spans.iter().all(|s| s.instance == id_a || s.instance == id_b), "only A and B export: {names:?}");

    let send = of(id_a, "message.send");
    let seq = spans.iter().filter(|s| s.instance == id_a && s.name == "message.seq").cloned().collect::<Vec<_>>();
    let store = of(id_a, "message.store");
    let publish = of(id_a, "bus.publish");
    let fanout = of(id_b, "fanout.deliver");
    for (what, found) in [("send", &send), ("store", &store), ("publish", &publish), ("B's fan-out", &fanout)] {
        assert_eq!(found.len(), 1, "one {what} span for the message: {names:?}");
    }
    let (send, store, publish, fanout) = (&send[0], &store[0], &publish[0], &fanout[0]);
    assert_eq!(send.attributes.get("confab.via").map(String::as_str), Some("rest"));
    assert_eq!(send.attributes.get("confab.room_id"), Some(&room));
    let trace = &send.trace_id;
    assert!(send.parent.is_empty(), "the send starts the trace");
    assert!(seq.iter().any(|s| &s.trace_id == trace && s.parent == send.span_id), "seq in the send: {seq:?}");
    assert_eq!((&store.trace_id, &store.parent), (trace, &send.span_id), "store in the send");
    assert_eq!((&publish.trace_id, &publish.parent), (trace, &send.span_id), "publish in the send");
    assert_eq!(&fanout.trace_id, trace, "B's fan-out joins the trace from A");
    assert_eq!(fanout.parent, publish.span_id, "B's fan-out is the publish's child");

    // The reply's trace runs from B's socket to A's fan-out.
    let send = of_message(&reply_id, id_b, "message.send");
    let publish = of_message(&reply_id, id_b, "bus.publish");
    let fanout = of_message(&reply_id, id_a, "fanout.deliver");
    assert!(send.len() == 1 && publish.len() == 1 && fanout.len() == 1, "the reply's spans: {names:?}");
    assert_eq!(send[0].attributes.get("confab.via").map(String::as_str), Some("socket"));
    assert_eq!((&publish[0].trace_id, &publish[0].parent), (&send[0].trace_id, &send[0].span_id));
    assert_eq!((&fanout[0].trace_id, &fanout[0].parent), (&send[0].trace_id, &publish[0].span_id));
    assert_ne!(send[0].trace_id, *trace, "a trace per message");
}
