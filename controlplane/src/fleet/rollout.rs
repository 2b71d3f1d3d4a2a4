//! The rollout state machine: a pure function (state, event) → (state, actions).
