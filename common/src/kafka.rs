//! Kafka client defaults every role applies, written as librdkafka property names and values so
//! that this crate needs no Kafka client of its own.

/// The longest a consumer's fetch waits at the broker for data to arrive, in milliseconds.
///
/// librdkafka's default is 500 ms. A real broker answers a waiting fetch as soon as data
/// arrives, so there the value only bounds idle long-polls; librdkafka's mock cluster (the
/// embedded broker of `tidemark run` and `tidemark broker`) answers an empty fetch only when the
/// full wait has passed, which added up to half a second of detection latency at every hop of a
/// sparse topic. At 50 ms an idle consumer sends twenty fetches a second per broker: on the
/// embedded broker that cost nothing measurable; against a real cluster it was not measured, and
/// a deployment that would rather have fewer idle fetches can set a larger value in a role's
/// `kafka.properties`.
/// Applied by the consumers of every role, standalone or inside `tidemark run`.
pub const FETCH_WAIT_MAX_MS: (&str, &str) = ("fetch.wait.max.ms", "50");
