//! The one small trait every stateful processor implements, so that the runtime, checkpoints
//! and tests treat them alike: handle an event, handle a watermark, snapshot and restore.
//! Implementations are per-partition folds: `(state, input) -> outputs`, no I/O.

/// A stateful stream operator over one input partition.
pub trait Operator {
    /// What it consumes.
    type In;
    /// What it produces.
    type Out;

    /// Folds one event into the state, appending any outputs.
    fn on_event(&mut self, input: Self::In, out: &mut Vec<Self::Out>);

    /// Event time has passed `watermark` (no more on-time events before it): emit what closes.
    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Self::Out>);
}
