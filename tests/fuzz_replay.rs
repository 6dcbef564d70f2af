//! The short fuzzing run of `make test`: every parser of outside input (the entry points the
//! libFuzzer targets in `fuzz/` call) on the seed corpus, on mutations of it and on random
//! bytes. The long run is `make fuzz` (docs/development.md, "Fuzzing"). A panic anywhere fails the test; in
//! debug builds that includes every arithmetic overflow.

use jellydemon::fuzzing;
use proptest::prelude::*;
use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("uci", fuzzing::uci),
    ("jellyfin", fuzzing::jellyfin),
    ("tc", fuzzing::tc),
    ("netlink", fuzzing::netlink),
    ("conntrack", fuzzing::conntrack),
];

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("fuzz/seeds").join(target)];
    if target == "uci" {
        dirs.push(root.join("tests/fixtures/uci/good"));
        dirs.push(root.join("tests/fixtures/uci/bad"));
    }
    // What `make fuzz` found, when it has run on this machine.
    dirs.push(root.join("target/fuzz/corpus").join(target));
    let mut out = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                out.push(b);
            }
        }
    }
    out
}

#[test]
fn seed_corpus_replays_cleanly() {
    for (name, f) in TARGETS {
        let s = seeds(name);
        assert!(!s.is_empty(), "{name}: no seeds in fuzz/seeds/{name}");
        for input in &s {
            f(input);
        }
    }
}

/// A seed with a few bytes changed, inserted or cut: the near-misses a parser meets most.
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let s = seeds(target);
    (
        0..s.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    )
        .prop_map(move |(i, edits)| {
            let mut b = s[i].clone();
            for (at, byte, kind) in edits {
                if b.is_empty() {
                    b.push(byte);
                    continue;
                }
                let p = at.index(b.len());
                match kind {
                    0 => b[p] = byte,
                    1 => b.insert(p, byte),
                    _ => b.truncate(p),
                }
            }
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn uci_survives(b in prop_oneof![mutated("uci"), prop::collection::vec(any::<u8>(), 0..512)]) {
        fuzzing::uci(&b);
    }

    #[test]
    fn jellyfin_survives(b in prop_oneof![mutated("jellyfin"), prop::collection::vec(any::<u8>(), 0..512)]) {
        fuzzing::jellyfin(&b);
    }

    #[test]
    fn tc_survives(b in prop_oneof![mutated("tc"), prop::collection::vec(any::<u8>(), 0..512)]) {
        fuzzing::tc(&b);
    }

    #[test]
    fn netlink_survives(b in prop_oneof![mutated("netlink"), prop::collection::vec(any::<u8>(), 0..512)]) {
        fuzzing::netlink(&b);
    }

    #[test]
    fn conntrack_survives(b in prop_oneof![mutated("conntrack"), prop::collection::vec(any::<u8>(), 0..512)]) {
        fuzzing::conntrack(&b);
    }
}
