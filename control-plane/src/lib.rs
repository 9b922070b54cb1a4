//! Shoal's control plane. Built by the control-plane issue; see ARCHITECTURE.md.
