//! What the router's firewall configuration means for shaping: flow offloading.
//!
//! With `firewall.@defaults[0].flow_offloading '1'`, firewall4 puts `flow add @ft` first in
//! its forward chain; an established connection then goes from the LAN port straight to the
//! WAN through the flowtable, at the ports' netfilter ingress hook, and never reaches the LAN
//! bridge's tc ingress hook where jellydemon redirects the server's packets. With
//! `flow_offloading_hw '1'` as well (fw4 honours it only with `flow_offloading` on), the
//! switch or the SoC's PPE forwards it without the CPU. Either way the router's per-viewer
//! classes see only each connection's first packets: shaping and per-viewer counting stop
//! working, while Jellyfin's own limits keep applying.

use serde::{Deserialize, Serialize};

/// Where the firewall's configuration lives on OpenWrt.
pub const FIREWALL_CONFIG: &str = "/etc/config/firewall";

/// Flow offloading as configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Offload {
    #[default]
    Off,
    Software,
    Hardware,
}

impl Offload {
    pub fn is_on(self) -> bool {
        self != Offload::Off
    }

    /// What it means for the user, one sentence.
    pub fn meaning(self) -> &'static str {
        match self {
            Offload::Off => "flow offloading is off",
            Offload::Software => "software flow offloading is on (firewall flow_offloading): established connections bypass the LAN ingress hook, so the router's per-viewer shaping and counting miss the media server's traffic (Jellyfin limits still apply)",
            Offload::Hardware => "hardware flow offloading is on (firewall flow_offloading_hw): established connections bypass the CPU and the LAN ingress hook, so the router's per-viewer shaping and counting miss the media server's traffic (Jellyfin limits still apply)",
        }
    }

    /// What to do about it.
    pub fn fix(self) -> &'static str {
        "turn it off for shaping to work (Network > Firewall > Routing/NAT Offloading, or: uci set firewall.@defaults[0].flow_offloading=0; uci set firewall.@defaults[0].flow_offloading_hw=0; uci commit firewall; /etc/init.d/firewall restart), or keep it and rely on Jellyfin limits alone (shaping.enabled '0')"
    }
}

/// Reads flow offloading from the firewall's UCI text: the first `config defaults` section,
/// as `firewall.@defaults[0]`. A file that does not parse says nothing (`Off`): the firewall
/// would not load it either.
pub fn offload(config: &[u8]) -> Offload {
    let Ok(pkg) = crate::uci::parse(config) else {
        return Offload::Off;
    };
    let Some(d) = pkg.sections.iter().find(|s| s.stype == "defaults") else {
        return Offload::Off;
    };
    let flag = |name: &str| {
        d.get(name)
            .and_then(|o| o.value.items().last().map(|v| v.to_string()))
            .and_then(|v| crate::config::parse_bool(&v))
            .unwrap_or(false)
    };
    match (flag("flow_offloading"), flag("flow_offloading_hw")) {
        (true, true) => Offload::Hardware,
        (true, false) => Offload::Software,
        // fw4 ignores the hardware flag without the software one.
        (false, _) => Offload::Off,
    }
}

/// Reads the router's firewall configuration; a missing file means no offloading.
pub fn read_offload(path: &std::path::Path) -> Offload {
    std::fs::read(path).map(|t| offload(&t)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloading_flags() {
        let base = "config defaults\n\toption input 'REJECT'\n\toption syn_flood '1'\n";
        assert_eq!(offload(base.as_bytes()), Offload::Off);
        let sw = format!("{base}\toption flow_offloading '1'\n");
        assert_eq!(offload(sw.as_bytes()), Offload::Software);
        let hw = format!("{sw}\toption flow_offloading_hw '1'\n");
        assert_eq!(offload(hw.as_bytes()), Offload::Hardware);
        let hw_only = format!("{base}\toption flow_offloading_hw '1'\n");
        assert_eq!(offload(hw_only.as_bytes()), Offload::Off, "fw4 needs both");
        let off = format!("{base}\toption flow_offloading 'off'\n");
        assert_eq!(offload(off.as_bytes()), Offload::Off);
        let yes = "config defaults\n\toption flow_offloading 'yes'\n";
        assert_eq!(offload(yes.as_bytes()), Offload::Software);
    }

    #[test]
    fn only_the_first_defaults_section_counts() {
        let t = "config zone\n\toption name 'lan'\n\toption flow_offloading '1'\n\
                 config defaults\n\toption flow_offloading '0'\n\
                 config defaults\n\toption flow_offloading '1'\n";
        assert_eq!(offload(t.as_bytes()), Offload::Off);
    }

    #[test]
    fn unreadable_is_off() {
        assert_eq!(
            offload(b"config defaults\n option 'unterminated"),
            Offload::Off
        );
        assert_eq!(offload(b""), Offload::Off);
        assert_eq!(
            read_offload(std::path::Path::new("/nonexistent/firewall")),
            Offload::Off
        );
        assert_eq!(
            serde_json::to_string(&Offload::Hardware).unwrap(),
            "\"hardware\""
        );
    }
}
