//! jellydemon: shares a router's uplink between remote Jellyfin viewers and the household.
//!
//! The daemon loop is `observe → decide → act` (DESIGN.md §3): adapters observe the kernel and
//! the server, a pure core decides, adapters act. Modules are named for those concepts.

pub mod backup;
pub mod check;
pub mod config;
pub mod conntrack;
pub mod daemon;
pub mod decide;
pub mod jellyfin;
pub mod monitor;
pub mod observe;
pub mod publish;
pub mod shaper;
pub mod status;
pub mod uci;
pub mod wol;
