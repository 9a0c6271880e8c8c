//! What each open connection costs in its task: the handler futures' sizes are fixed at compile
//! time, so a change that puts setup state back into the long-lived part (a dial, a request, a
//! boxed-away path) shows here, not only in the memory bench (issue 12: 7.5 KB per outbound
//! connection, held twice, before the setup moved out).

use std::future::Future;
use std::mem::size_of;

fn returned4<A, B, C, D, F>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
    size_of::<F>()
}

fn returned6<A, B, C, D, E, G, F>(_: impl FnOnce(A, B, C, D, E, G) -> F) -> usize {
    size_of::<F>()
}

/// The task `accept_loop` spawns around an outbound handler.
fn outbound_task<A, B, C, D, F: Future<Output = ()>>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
    fn returned3<A, B, C, F>(_: impl FnOnce(A, B, C) -> F) -> usize {
        size_of::<F>()
    }
    returned3(super::until_force_close::<F>)
}

/// Bytes; both build profiles fit (debug futures are a little larger).
const OPEN_CONNECTION_STATE: usize = 2048;

#[test]
fn an_open_outbound_connection_holds_only_the_copy_state() {
    let handler = returned4(super::outbound::handle);
    assert!(
        handler <= OPEN_CONNECTION_STATE,
        "outbound handler future: {handler} bytes"
    );
    // The handler is boxed once, not kept twice in the task around it.
    let task = outbound_task(super::outbound::handle);
    assert!(task <= 512, "task around the handler: {task} bytes");
}

#[test]
fn an_open_inbound_stream_holds_only_the_copy_state() {
    let stream = returned6(super::inbound::stream);
    assert!(
        stream <= OPEN_CONNECTION_STATE,
        "HBONE stream future: {stream} bytes"
    );
}
