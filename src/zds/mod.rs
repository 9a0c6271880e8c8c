//! (module under construction)
pub mod proto;
pub mod protocol;
pub mod seqpacket;
