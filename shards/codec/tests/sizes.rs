//! The packet's size is part of the per-message cost: a `Packet` moves by value through the
//! decoder, the shard and the session, so its large bodies are boxed (see `Packet`).

use shardmq_codec::Packet;

#[test]
fn a_packet_is_at_most_136_bytes() {
    assert!(
        std::mem::size_of::<Packet>() <= 136,
        "Packet is {} B: box the variant that grew",
        std::mem::size_of::<Packet>()
    );
}
