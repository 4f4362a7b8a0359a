//! The header of a hand-over offer ([`Offer`]): who offers, in which mode
//! and layout, the slots its workers use, the slots older servers that
//! still drain hold ([`Held`]), and how many descriptors follow. Written as
//! `key=value` lines after the protocol's first line; unknown keys are
//! ignored, so a field added later is optional to an older reader.

use std::ops::Range;

use super::UpgradeError;
use crate::config::Mode;

/// The hand-over protocol's version (the first line of the offer).
pub(crate) const PROTOCOL: &str = "hermes-upgrade 1";

/// Slots of the kernel maps that a live server holds: the workers of a
/// server keep writing their slots of the table and the counters until
/// that process exits, so nobody else may use them before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    /// The server's process.
    pub(crate) pid: u32,
    /// Its first slot.
    pub(crate) base: usize,
    /// How many slots it holds from there.
    pub(crate) count: usize,
}

impl Held {
    /// The slots, as a range.
    pub(crate) fn slots(&self) -> Range<usize> {
        self.base..self.base + self.count
    }
}

/// The header of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    pub(crate) pid: u32,
    pub(crate) mode: Mode,
    pub(crate) layout: u64,
    pub(crate) slot_base: usize,
    pub(crate) workers: usize,
    pub(crate) listeners: usize,
    pub(crate) kernel: bool,
    /// Slots older servers still hold (they drain): the successor must
    /// leave them alone as well as the offering server's own.
    pub(crate) held: Vec<Held>,
}

impl Offer {
    /// The slots the offering server itself holds.
    pub(crate) fn own(&self) -> Held {
        Held { pid: self.pid, base: self.slot_base, count: self.workers }
    }

    pub(crate) fn encode(&self) -> String {
        let held: Vec<String> =
            self.held.iter().map(|h| format!("{}:{}:{}", h.pid, h.base, h.count)).collect();
        format!(
            "{PROTOCOL}\npid={}\nmode={}\nlayout={}\nslot_base={}\nworkers={}\nlisteners={}\nkernel={}\nheld={}\n",
            self.pid,
            self.mode.as_str(),
            self.layout,
            self.slot_base,
            self.workers,
            self.listeners,
            u8::from(self.kernel),
            held.join(",")
        )
    }

    pub(crate) fn decode(text: &str) -> Result<Self, UpgradeError> {
        let mut lines = text.lines();
        let first = lines.next().unwrap_or_default();
        if first != PROTOCOL {
            return Err(UpgradeError::Protocol(format!("expected `{PROTOCOL}`, got `{first}`")));
        }
        let mut get = std::collections::HashMap::new();
        for line in lines {
            if let Some((k, v)) = line.split_once('=') {
                get.insert(k, v);
            }
        }
        let field = |k: &str| -> Result<u64, UpgradeError> {
            get.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| UpgradeError::Protocol(format!("the offer has no valid `{k}`")))
        };
        let mode = match get.get("mode").copied() {
            Some("hermes") => Mode::Hermes,
            Some("kernel-hash") => Mode::KernelHash,
            other => return Err(UpgradeError::Protocol(format!("the offer's mode {other:?} is unknown"))),
        };
        // Absent from an older release's offer: it knew of no other server.
        let held = match get.get("held").copied() {
            None | Some("") => Vec::new(),
            Some(list) => list.split(',').map(decode_held).collect::<Result<_, _>>()?,
        };
        Ok(Self {
            pid: field("pid")? as u32,
            mode,
            layout: field("layout")?,
            slot_base: field("slot_base")? as usize,
            workers: field("workers")? as usize,
            listeners: field("listeners")? as usize,
            kernel: field("kernel")? == 1,
            held,
        })
    }
}

/// One `pid:base:count` of the `held` field.
fn decode_held(item: &str) -> Result<Held, UpgradeError> {
    let bad = || UpgradeError::Protocol(format!("the offer's held slots `{item}` are not pid:base:count"));
    let mut parts = item.split(':').map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(base)), Some(Ok(count)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    Ok(Held { pid: u32::try_from(pid).map_err(|_| bad())?, base: base as usize, count: count as usize })
}

#[cfg(test)]
mod tests {
    use hermes_bpf::layout::LAYOUT_VERSION;

    use super::*;

    #[test]
    fn offer_round_trips_and_bad_headers_are_refused() {
        let mut o = Offer {
            pid: 42,
            mode: Mode::Hermes,
            layout: LAYOUT_VERSION,
            slot_base: 4,
            workers: 4,
            listeners: 4,
            kernel: true,
            held: Vec::new(),
        };
        assert_eq!(Offer::decode(&o.encode()).unwrap(), o);
        o.held = vec![Held { pid: 7, base: 0, count: 4 }, Held { pid: 9, base: 8, count: 2 }];
        assert_eq!(Offer::decode(&o.encode()).unwrap(), o);
        assert!(matches!(Offer::decode("hermes-upgrade 9\n"), Err(UpgradeError::Protocol(_))));
        assert!(matches!(
            Offer::decode("hermes-upgrade 1\npid=1\nmode=hermes\n"),
            Err(UpgradeError::Protocol(m)) if m.contains("layout")
        ));
        let bad = o.encode().replace("held=7:0:4", "held=7:0");
        assert!(matches!(Offer::decode(&bad), Err(UpgradeError::Protocol(m)) if m.contains("7:0")));
    }

    /// An offer of a release that sent no `held` field knew of no older
    /// server: none is held.
    #[test]
    fn an_offer_without_held_slots_holds_none() {
        let text =
            "hermes-upgrade 1\npid=5\nmode=hermes\nlayout=1\nslot_base=0\nworkers=2\nlisteners=2\nkernel=1\n";
        let o = Offer::decode(text).unwrap();
        assert!(o.held.is_empty());
        assert_eq!(o.own(), Held { pid: 5, base: 0, count: 2 });
    }
}
