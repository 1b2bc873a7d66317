//! A bus event as another node (or anything on the Redis channel) sent it.
//! Never a panic; whatever decodes encodes back to the same event, which
//! decodes the same again.
#![no_main]

use bson::oid::ObjectId;
use confab::bus::{wire, Delivery, Event, Topic};
use libfuzzer_sys::fuzz_target;

fn event(delivery: &Delivery) -> Event<'_> {
    match delivery {
        Delivery::Message { id, message } => {
            Event::Message { id: *id, seq: message.seq, stored_at_us: message.stored_at_us, frame: &message.frame }
        }
        Delivery::Ephemeral { skip, frame } => Event::Ephemeral { skip: *skip, frame },
        Delivery::Evict { user } => Event::Evict { user: *user },
        Delivery::MembershipEnded { room, frame } => Event::MembershipEnded { room: *room, frame },
        Delivery::Presence { change, user, frame } => Event::Presence { change: *change, user: *user, frame },
        Delivery::Notify { id, room, stored_at_us, frame } => {
            Event::Notify { id: *id, room: *room, stored_at_us: *stored_at_us, frame }
        }
        Delivery::Close { session, code, reason } => Event::Close { session: *session, code: *code, reason },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, payload)) = data.split_first() else { return };
    let id = ObjectId::from_bytes([7; 12]);
    let topic = if which & 1 == 0 { Topic::Room(id) } else { Topic::User(id) };
    if let Some(delivery) = wire::decode(topic, bytes::Bytes::copy_from_slice(payload)) {
        let again = wire::decode(topic, wire::encode(event(&delivery)));
        assert_eq!(again.as_ref(), Some(&delivery), "decode, encode, decode is the same event");
    }
});
