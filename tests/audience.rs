//! A room's member list for notifications, against real Redis and FerretDB.
//! Alone in its own test binary: it counts with the process's metrics, which
//! every node of a test process shares.

mod common;

use common::{Cluster, WAIT};

const STORE_READS: &str = "confab_notification_audience_total{source=\"store\"";
const ALL_READS: &str = "confab_notification_audience_total";

/// A burst of messages to a room whose member list the node does not hold
/// reads the list from the store once; the other messages wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_messages_reads_the_member_list_once() {
    let cluster = Cluster::start(1).await;
    let a = &cluster.nodes[0];
    let alice = a.register("alice").await;
    let room = a.create_room(&alice, "busy", "public").await;
    let mut others = Vec::new();
    for i in 0..5 {
        let user = a.register(&format!("member{i}")).await;
        let (status, body) = a.call("POST", &format!("/rooms/{room}/join"), Some(&user.token), None).await;
        assert_eq!(status, 200, "{body}");
        others.push(user);
    }
    let (loads, looked_up) = (a.metric(STORE_READS).await, a.metric(ALL_READS).await);

    let burst = 16;
    let contents: Vec<String> = (0..burst).map(|i| format!("m{i}")).collect();
    futures::future::join_all(contents.iter().map(|c| a.post_message(&alice, &room, c))).await;

    // Every member is notified of every message (none of them is online).
    let deadline = tokio::time::Instant::now() + WAIT;
    for user in &others {
        loop {
            let (status, page) = a.call("GET", "/notifications?limit=100", Some(&user.token), None).await;
            assert_eq!(status, 200, "{page}");
            let got = page["notifications"].as_array().unwrap().len();
            if got == burst {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{got} of {burst} notifications: {page}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    assert_eq!(a.metric(ALL_READS).await - looked_up, burst as f64, "one look-up per message");
    assert_eq!(a.metric(STORE_READS).await - loads, 1.0, "one read of the list for the whole burst");
    cluster.shutdown().await;
}
