//! The HTTP/2 limits of every gRPC connection the server accepts: on the
//! gRPC port (`server.rs`, through tonic) and on a standby, which serves its
//! clients' connections itself and forwards their calls to the leader
//! (`cluster.rs`, through hyper). Set rather than left to hyper's defaults,
//! each of which closed connections that clients rely on
//! (`tests/it/http2.rs`, raw frames).

/// Calls a client may open and cancel before the server takes them, on one
/// connection, before the server answers GOAWAY (`ENHANCE_YOUR_CALM`). A
/// cancelled call the server never took costs it nothing but its place in
/// the queue; a thousand covers a client whose every call times out at once.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 1024;

/// The flow-control window of one connection (every stream on it
/// together), set rather than left to hyper's 1 MiB. h2 also bounds the
/// DATA frames of under 256 bytes that wait unread on a connection: each
/// counts 256 bytes less its own length against a budget of half this
/// window, and past it h2 sends the connection away (GOAWAY
/// `ENHANCE_YOUR_CALM`, "too_many_data_frames"). A worker's messages
/// (completions, heartbeats, logs) are such frames, one each, and they pile
/// up unread whenever the server pauses (a CPU-throttled container, a
/// stalled machine): with 1 MiB, about 2,100 heartbeats or 2,700
/// completions, a seventh of a second of bench b's rate on one worker
/// connection, closed the connection and every task it ran. 8 MiB allows
/// about 16,000 heartbeats or 21,000 completions, while a connection still
/// holds at most 8 MiB of payload that nobody reads.
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
