//! The 2018 btrfs EEXIST race, replayed step by step on the sequential reference map.
//!
//! Two direct-I/O jobs run against one file whose only file extent is `[0, 32K)`:
//!
//! - t1 writes `[8K, 32K)`: it splits the cached `[0, 32K)` and inserts its new `[8K, 32K)`;
//! - t2 reads `[0, 4K)`: it missed in the cache *before* t1 ran, loaded the whole `[0, 32K)`
//!   from disk, and inserts that stale map afterwards.
//!
//! t2's insert meets the new tree. The rule the kernel used before the fix answered `EEXIST`
//! to the reader; [`ExtentMap::get_or_insert`] answers with the map that covers the offset.
//! The example then walks through the four cases of the fix, and asserts every answer, so it
//! fails if the behaviour regresses.
//!
//! ```sh
//! cargo run --release --example seed_race
//! ```

use extent_cache::reference::ExtentMap;
use extent_cache::{Error, Extent, Flags, Location};

const K: u64 = 1024;
/// Columns of the pictures per KiB of file.
const COLS_PER_K: u64 = 2;
/// The pictures show the file range `[0, VIEW_END)`.
const VIEW_END: u64 = 32 * K;

/// Where the file extent `[0, 32K)` lives on disk.
const OLD_DISK: u64 = 1024 * K;
/// Where t1's direct-I/O write puts the new data.
const NEW_DISK: u64 = 4096 * K;

/// The file extent as it is on disk: `[0, 32K)`, regular, uncompressed, at `OLD_DISK`.
fn file_extent() -> Extent {
    Extent::regular(0, 32 * K, OLD_DISK, 32 * K, 0, 32 * K).with_generation(1)
}

/// t1's new extent: `[8K, 32K)` written at `NEW_DISK`, pinned until its ordered extent ends.
fn t1_new_extent() -> Extent {
    Extent::regular(8 * K, 24 * K, NEW_DISK, 24 * K, 0, 24 * K)
        .with_flags(Flags::PINNED)
        .with_generation(2)
}

// ---------------------------------------------------------------------------------------------
// Pictures
// ---------------------------------------------------------------------------------------------

fn col(offset: u64) -> usize {
    usize::try_from(offset.min(VIEW_END) / K * COLS_PER_K).unwrap_or(usize::MAX)
}

fn kib(bytes: u64) -> String {
    format!("{}K", bytes / K)
}

/// `0K              8K ...`: a label every 8K.
fn ruler() -> String {
    let mut line = String::new();
    for at in (0..=VIEW_END).step_by(usize::try_from(8 * K).unwrap_or(usize::MAX)) {
        let label = kib(at);
        while line.len() < col(at) {
            line.push(' ');
        }
        line.push_str(&label);
    }
    line
}

/// One extent as a bar, placed at its start: `[0K -------- 8K)`.
fn bar(e: &Extent) -> String {
    let (from, to) = (col(e.start()), col(e.end()));
    let width = to.saturating_sub(from).max(2);
    let (l, r) = (kib(e.start()), kib(e.end()));
    let body = match width.checked_sub(l.len() + r.len() + 4) {
        Some(dashes) if dashes > 0 => format!("[{l} {} {r})", "-".repeat(dashes)),
        _ => format!("[{})", "-".repeat(width - 2)),
    };
    format!("{}{body}", " ".repeat(from))
}

/// Where an extent's data lives, in words.
fn describe(e: &Extent) -> String {
    let place = match e.location() {
        Location::Hole => "hole".to_string(),
        Location::Inline => "inline".to_string(),
        Location::Regular {
            disk_bytenr,
            offset,
            ..
        } => format!("disk extent @{} + offset {}", kib(disk_bytenr), kib(offset)),
    };
    let mut flags = Vec::new();
    if e.flags().contains(Flags::PINNED) {
        flags.push("pinned");
    }
    if e.flags().contains(Flags::MERGED) {
        flags.push("merged");
    }
    let flags = if flags.is_empty() {
        String::new()
    } else {
        format!(", {}", flags.join(", "))
    };
    format!("{place}, gen {}{flags}", e.generation())
}

fn span(e: &Extent) -> String {
    format!("[{}, {})", kib(e.start()), kib(e.end()))
}

const PICTURE_WIDTH: usize = (VIEW_END / K * COLS_PER_K) as usize + 4;

fn show_line(e: &Extent, note: &str) {
    println!("      {:<PICTURE_WIDTH$}  {}{note}", bar(e), describe(e));
}

/// The whole tree, one line per extent.
fn show(title: &str, map: &ExtentMap) {
    println!("    {title}");
    println!("      {}", ruler());
    if map.is_empty() {
        println!("      (empty)");
    }
    for (e, modified) in map.entries() {
        show_line(&e, if modified { ", modified" } else { "" });
    }
    println!();
}

/// An extent a thread holds but has not inserted.
fn show_held(who: &str, e: &Extent) {
    println!("    {who} holds (not in the tree):");
    show_line(e, "");
    println!();
}

fn step(title: &str) {
    println!("\n{title}");
    println!("{}", "-".repeat(title.len()));
}

fn spans(map: &ExtentMap) -> Vec<(u64, u64)> {
    map.iter().map(|e| (e.start(), e.end())).collect()
}

/// Prints one operation's answer under a label.
fn say(label: &str, r: &Result<Extent, Error>) {
    println!("    {label:<28}{}", answer(r));
}

fn answer(r: &Result<Extent, Error>) -> String {
    match r {
        Ok(e) => format!("{} ({})", span(e), describe(e)),
        Err(Error::Exists { rejected, existing }) => format!(
            "Err(EEXIST): {} overlaps {}",
            span(rejected),
            span(existing)
        ),
        Err(other) => format!("Err({other})"),
    }
}

// ---------------------------------------------------------------------------------------------
// The rule before the fix
// ---------------------------------------------------------------------------------------------

/// What `btrfs_get_extent()` did with `-EEXIST` before the 2018 fix, on the reference map.
///
/// `existing = search(start)`. Only when `start` lies strictly inside `existing` is `existing`
/// the answer. Otherwise `merge_extent_mapping()` fits `em` into the gap next to `existing`:
/// before it when `start < existing.start`, else between `existing` and its successor. With
/// `start == existing.start` that gap is `[existing.end, ...)`, which does not hold `start` and
/// can be empty: the insert of the empty map fails and the reader gets `-EEXIST`.
///
/// (The kernel also had a fast path for an `existing` that covers all of `em` at the same disk
/// block; it does not apply to any case below, so it is left out.)
fn pre_fix_get_or_insert(map: &mut ExtentMap, em: Extent, start: u64) -> Result<Extent, Error> {
    match map.insert(em) {
        Ok(()) => return Ok(map.get(start).unwrap_or(em)),
        Err(Error::Exists { .. }) => {}
        Err(other) => return Err(other),
    }
    let existing = map
        .search(start, 1)
        .expect("an Exists error means the tree is not empty");
    if existing.start() < start && start < existing.end() {
        return Ok(existing);
    }
    let predecessor = map
        .iter()
        .take_while(|x| x.start() < existing.start())
        .last();
    let successor = map.iter().find(|x| x.start() > existing.start());
    let (prev, next) = if start < existing.start() {
        (predecessor, Some(existing))
    } else {
        (Some(existing), successor)
    };
    let s = prev.map_or(em.start(), |p| p.end()).max(em.start());
    let e = next.map_or(em.end(), |n| n.start()).min(em.end());
    match em.trimmed(s, e) {
        Some(fitted) => {
            map.insert(fitted)?;
            Ok(map.get(start).unwrap_or(fitted))
        }
        // The kernel inserted the empty map [s, s) and got -EEXIST back.
        None => Err(Error::Exists {
            rejected: Box::new(em),
            existing: Box::new(existing),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// The race
// ---------------------------------------------------------------------------------------------

fn replay_race() {
    println!("The race: t1 = direct-I/O write of [8K, 32K), t2 = direct-I/O read of [0K, 4K)");
    println!(
        "File extent on disk: [0K, 32K) at disk extent @{}.",
        kib(OLD_DISK)
    );
    let mut map = ExtentMap::new();

    step("Step 1. t2 misses in the cache and loads [0K, 32K) from disk");
    show("tree:", &map);
    assert!(map.lookup(0, 4 * K).is_none(), "the cache starts empty");
    let stale = file_extent();
    show_held("t2", &stale);

    step("Step 2. t1 misses too, loads [0K, 32K) and inserts it");
    map.insert(file_extent()).expect("the tree is empty");
    show("tree:", &map);
    assert_eq!(spans(&map), [(0, 32 * K)]);
    let loaded = map.clone();

    step("Step 3a. t1 drops [8K, 32K) from the cache: [0K, 32K) is split, [0K, 8K) stays");
    let dropped = map.drop_range(8 * K, 32 * K, false).expect("8K < 32K");
    show("tree:", &map);
    assert_eq!(dropped.extents, 1, "one extent was cut");
    assert_eq!(spans(&map), [(0, 8 * K)]);
    let front = map.get(0).expect("the front piece stays");
    assert_eq!(
        front.block_start(),
        Some(OLD_DISK),
        "the front piece keeps its disk block"
    );

    step("Step 3b. t1 inserts its new [8K, 32K) (modified: not merged)");
    map.insert_modified(t1_new_extent())
        .expect("[8K, 32K) is free");
    show("tree:", &map);
    assert_eq!(spans(&map), [(0, 8 * K), (8 * K, 32 * K)]);
    let after_t1 = map.entries();

    // Steps 3a and 3b are one atomic `replace_range` in this crate: same tree.
    let mut atomic = loaded;
    atomic
        .replace_range(t1_new_extent(), true)
        .expect("replace_range never meets Exists");
    assert_eq!(
        atomic.entries(),
        after_t1,
        "replace_range == drop_range + insert"
    );
    println!("    (replace_range(new [8K, 32K), modified) builds the same tree in one step.)");

    step("Step 4. t2 inserts its stale [0K, 32K) for offset 0K");
    show_held("t2", &stale);
    let strict = map.insert(stale).map(|()| stale);
    say("strict insert:", &strict);
    assert!(
        matches!(strict, Err(Error::Exists { rejected, existing })
            if *rejected == stale && *existing == front),
        "a strict insert must fail with Exists and give both extents back"
    );

    let mut old = map.clone();
    let old_answer = pre_fix_get_or_insert(&mut old, stale, 0);
    say("pre-fix kernel rule:", &old_answer);
    println!(
        "{:32}(search(0K) = [0K, 8K) and start == existing.start:",
        ""
    );
    println!("{:32} the gap [8K, 8K) after it is empty -> EEXIST)", "");
    assert!(
        matches!(old_answer, Err(Error::Exists { existing, .. }) if *existing == front),
        "the pre-fix rule must reproduce the bug"
    );

    let got = map.get_or_insert(stale, 0);
    say("get_or_insert(stale, 0K):", &got);
    assert_eq!(
        got,
        Ok(front),
        "get_or_insert hands back the existing [0K, 8K)"
    );
    assert_eq!(map.entries(), after_t1, "and leaves the tree as it was");

    step("Step 4'. the same stale map for offset 4K (t2 reading [4K, 8K))");
    let mut old = map.clone();
    let old_answer = pre_fix_get_or_insert(&mut old, stale, 4 * K);
    say("pre-fix kernel rule:", &old_answer);
    assert_eq!(
        old_answer,
        Ok(front),
        "4K lies inside [0K, 8K): even the old rule is right"
    );
    let got = map.get_or_insert(stale, 4 * K);
    say("get_or_insert(stale, 4K):", &got);
    assert_eq!(got, Ok(front));
    assert_eq!(map.entries(), after_t1);

    println!();
    show("tree after t2 (unchanged):", &map);
}

// ---------------------------------------------------------------------------------------------
// The four cases
// ---------------------------------------------------------------------------------------------

struct Case {
    name: &'static str,
    /// Extents already in the tree (written by someone else: modified, never merged).
    tree: Vec<Extent>,
    /// The offset the reader wants.
    start: u64,
    /// What `get_or_insert` must answer.
    expected: (u64, u64),
    /// Whether the pre-fix rule answered EEXIST.
    pre_fix_fails: bool,
}

fn written(start: u64, len: u64) -> Extent {
    Extent::regular(start, len, NEW_DISK + start, len, 0, len).with_generation(2)
}

fn four_cases() {
    step("The four cases of the fix (em = the stale [0K, 32K), existing = search(start))");
    let cases = [
        Case {
            name: "1) start < existing.start: fill the gap before existing",
            tree: vec![written(16 * K, 8 * K)],
            start: 4 * K,
            expected: (0, 16 * K),
            pre_fix_fails: false,
        },
        Case {
            name: "2) start == existing.start: return existing (the bug: EEXIST)",
            tree: vec![written(0, 8 * K), written(8 * K, 24 * K)],
            start: 0,
            expected: (0, 8 * K),
            pre_fix_fails: true,
        },
        Case {
            name: "3) existing.start < start < existing.end: return existing",
            tree: vec![written(0, 8 * K), written(8 * K, 24 * K)],
            start: 4 * K,
            expected: (0, 8 * K),
            pre_fix_fails: false,
        },
        Case {
            name: "4) start >= existing.end: fill the gap after existing",
            tree: vec![written(0, 8 * K)],
            start: 16 * K,
            expected: (8 * K, 32 * K),
            pre_fix_fails: false,
        },
    ];
    for case in cases {
        println!("\n  {}", case.name);
        let mut map = ExtentMap::new();
        for e in &case.tree {
            map.insert_modified(*e)
                .expect("the cases use disjoint extents");
        }
        show(&format!("tree, start = {}:", kib(case.start)), &map);
        let stale = file_extent();
        let existing = map.search(case.start, 1).expect("never empty");
        println!(
            "    existing = search({}) = {}",
            kib(case.start),
            span(&existing)
        );

        let mut old = map.clone();
        let old_answer = pre_fix_get_or_insert(&mut old, stale, case.start);
        say("pre-fix kernel rule:", &old_answer);

        let got = map.get_or_insert(stale, case.start);
        say("get_or_insert:", &got);

        let got = got.expect("get_or_insert never fails on a well-formed candidate");
        assert_eq!((got.start(), got.end()), case.expected, "{}", case.name);
        assert!(got.contains(case.start), "the answer covers the offset");
        assert_eq!(
            map.get(case.start),
            Some(got),
            "and is what the tree now holds"
        );
        if case.pre_fix_fails {
            assert!(
                matches!(old_answer, Err(Error::Exists { .. })),
                "{}",
                case.name
            );
        } else {
            assert_eq!(old_answer, Ok(got), "{}", case.name);
        }
        // A trimmed candidate starts as far into the disk extent as it starts into the file.
        if got.start() != existing.start() {
            assert!(matches!(
                got.location(),
                Location::Regular { offset, .. } if offset == got.start()
            ));
        }
    }
}

fn main() {
    replay_race();
    four_cases();
    println!("\nAll assertions held: get_or_insert never answered EEXIST.");
}
