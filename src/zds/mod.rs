//! (module under construction)
pub mod proto;
pub mod seqpacket;
