//! Simulated device (being written).
