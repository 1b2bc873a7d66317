//! Micro-benchmarks of the hot path: parsing a client envelope, encoding a
//! message frame, looking up a room's local subscribers, fanning one frame
//! out to 1, 100 and 10,000 local connection queues, and setting up a new
//! connection's frame limiter.
//!
//! `cargo bench --bench hot_path`; figures in docs/benchmarks.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bson::oid::ObjectId;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio_util::sync::CancellationToken;

use confab::bus::Stored;
use confab::fanout::line::Discard;
use confab::fanout::registry::Outbox;
use confab::fanout::{Registry, RoomFrame};
use confab::protocol::{Request, ServerEvent};
use confab::ratelimit::FrameLimiter;
use confab::store::Message;

const SEND: &[u8] =
    br#"{"type":"send_message","channel":"6b05f73b38ebee478010001e","data":{"content":"hello there, how is everyone doing today?","client_msg_id":"c-1842"},"ref":17}"#;

fn message() -> Message {
    let id = ObjectId::new();
    Message {
        id,
        room_id: ObjectId::new(),
        seq: 123_456,
        sender_id: ObjectId::new(),
        content: "hello there, how is everyone doing today?".into(),
        client_msg_id: Some("c-1842".into()),
        dedup_key: "c-1842".into(),
        timestamp: chrono::Utc::now(),
        edited_at: None,
        deleted: false,
        deleted_at: None,
    }
}

fn envelope(c: &mut Criterion) {
    c.bench_function("envelope_parse", |b| b.iter(|| Request::parse(black_box(SEND)).ok().unwrap()));
    let m = message();
    c.bench_function("frame_encode", |b| b.iter(|| ServerEvent::Message(black_box(&m)).encode()));
}

fn registry_lookup(c: &mut Criterion) {
    let reg = Registry::new();
    let rooms: Vec<ObjectId> = (0..10_000).map(|_| ObjectId::new()).collect();
    let mut keep = Vec::new();
    for r in &rooms {
        let o = Outbox::new(None, 8, CancellationToken::new());
        reg.join(*r, &o);
        keep.push(o);
    }
    let mut i = 0;
    c.bench_function("registry_lookup_10k_rooms", |b| {
        b.iter(|| {
            i = (i + 1) % rooms.len();
            black_box(reg.local_subscribers(rooms[i]))
        })
    });
}

fn fan_out(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = runtime.enter();
    let delivery = RoomFrame::Message(Stored::new(1, ServerEvent::Message(&message()).encode()));
    let mut group = c.benchmark_group("fan_out");
    for n in [1usize, 100, 10_000] {
        let reg = Registry::new();
        let room = ObjectId::new();
        // Each connection's line writes to a socket that takes every byte:
        // this times Confab's own work per receiver, not the kernel's.
        let conns: Vec<Arc<Outbox>> = (0..n)
            .map(|_| {
                let o = Outbox::new(None, 1024, CancellationToken::new());
                o.line.attach(Discard);
                reg.join(room, &o);
                o
            })
            .collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(reg.fan_out(room, &delivery)));
        });
        drop(conns);
    }
    group.finish();
}

/// Every chat connection makes one, as it opens.
fn frame_limiter(c: &mut Criterion) {
    let limits = confab::config::RateLimits::default();
    c.bench_function("frame_limiter_new", |b| b.iter(|| black_box(FrameLimiter::new(black_box(&limits)))));
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = envelope, registry_lookup, fan_out, frame_limiter
}
criterion_main!(benches);
