//! Any sequence of datagrams (with any fd count) from the agent: the ZDS state machine must
//! answer each with an event or an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshtunnel::zds::Protocol;

fuzz_target!(|data: &[u8]| {
    let mut p = Protocol::new();
    // Datagrams separated by 0xff; the byte before each says how many fds came with it.
    for chunk in data.split(|b| *b == 0xff) {
        let (fds, body) = match chunk.split_first() {
            Some((n, rest)) => ((*n % 4) as usize, rest),
            None => (0, chunk),
        };
        let _ = p.on_datagram(body, fds);
    }
});
