//! Property tests: random models (schema-valid ones and older-version forms) round-trip exactly through XML and JSON, and
//! random damage to real documents never panics the reader.

#[path = "../../tests/src/reference.rs"]
mod reference;

mod common;

use capsd_core::{json, xml};
use proptest::prelude::*;

/// `PROPTEST_CASES` when set, `default` otherwise.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn random_models_round_trip_through_xml(caps in common::gen::domain_caps_any_version()) {
        let text = xml::to_xml(&caps);
        let back = xml::from_xml(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&back, &caps);
        prop_assert_eq!(xml::to_xml(&back), text);
    }

    #[test]
    fn random_models_round_trip_through_json(caps in common::gen::domain_caps_any_version()) {
        let j = json::to_json(&caps);
        let back = json::from_json(&j).map_err(|e| TestCaseError::fail(format!("{e}\n{j}")))?;
        prop_assert_eq!(&back, &caps);
        prop_assert_eq!(xml::to_xml(&back), xml::to_xml(&caps));
    }
}

/// One kind of damage applied to a document.
#[derive(Debug, Clone)]
enum Damage {
    Truncate(usize),
    ReplaceByte(usize, u8),
    Insert(usize, &'static str),
    Delete(usize, usize),
    Swap(usize, usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    let snippets = prop::sample::select(vec![
        "<",
        ">",
        "&",
        "&amp;",
        "&#0;",
        "&#xD800;",
        "&bogus;",
        "'",
        "\"",
        "/>",
        "</a>",
        "<a>",
        "<!--",
        "-->",
        "<![CDATA[x]]>",
        "<!DOCTYPE x>",
        "<!ENTITY e 'x'>",
        "<?pi?>",
        "supported='maybe'",
        " x='1'",
        "\u{0}",
        "\u{7}",
        "é",
        "<enum name='x'/>",
        "<value>v</value>",
        "<devices>",
        "</devices>",
    ]);
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::ReplaceByte(i, b)),
        (any::<usize>(), snippets).prop_map(|(i, s)| Damage::Insert(i, s)),
        (any::<usize>(), 1usize..200).prop_map(|(i, n)| Damage::Delete(i, n)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Damage::Swap(i, j)),
    ]
}

fn apply(doc: &[u8], damages: &[Damage]) -> String {
    let mut b = doc.to_vec();
    for d in damages {
        if b.is_empty() {
            break;
        }
        let len = b.len();
        match *d {
            Damage::Truncate(i) => b.truncate(i % len),
            Damage::ReplaceByte(i, v) => b[i % len] = v,
            Damage::Insert(i, s) => {
                let at = i % (len + 1);
                b.splice(at..at, s.bytes());
            }
            Damage::Delete(i, n) => {
                let at = i % len;
                b.drain(at..(at + n).min(len));
            }
            Damage::Swap(i, j) => b.swap(i % len, j % len),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

proptest! {
    // PROPTEST_CASES raises the number of cases for a longer hunt (CI uses the default).
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    #[test]
    fn damaged_fixtures_never_panic(pick in any::<prop::sample::Index>(), damages in proptest::collection::vec(damage(), 1..4)) {
        let Some(_) = reference::need("fixtures") else { return Ok(()) };
        let files = common::all_documents();
        let path = &files[pick.index(files.len())];
        let original = common::read(path);
        let input = apply(original.as_bytes(), &damages);
        match xml::from_xml(&input) {
            Ok(caps) => {
                // Whatever is accepted is written in libvirt's layout and reads back the same.
                let out = xml::to_xml(&caps);
                let again = xml::from_xml(&out);
                prop_assert_eq!(again.as_ref(), Ok(&caps));
            }
            Err(e) => {
                let lines = input.split('\n').count();
                prop_assert!(e.line >= 1 && e.line <= lines, "line {} outside 1..={}: {}", e.line, lines, e);
                prop_assert!(!e.message.is_empty());
            }
        }
    }
}
