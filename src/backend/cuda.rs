//! CUDA driver backend (being written).
