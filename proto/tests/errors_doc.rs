//! docs/errors.md and [`Reason`] list the same codes with the same gRPC statuses.

use std::collections::BTreeMap;

use dduomq_proto::Reason;

/// Header of the doc's tables of reason codes.
const CODE_TABLE_HEADER: &str = "| code | gRPC status | meaning |";

/// Every `code → gRPC status name` row of the doc's code tables.
fn documented_codes() -> BTreeMap<String, String> {
    let doc = include_str!("../../docs/errors.md");
    let mut codes = BTreeMap::new();
    let mut in_code_table = false;
    for line in doc.lines() {
        if line == CODE_TABLE_HEADER {
            in_code_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_code_table = false;
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if !in_code_table || cells[1].starts_with("---") {
            continue;
        }
        let code = cells[1].trim_matches('`').to_string();
        let status = cells[2].to_string();
        assert!(
            codes.insert(code.clone(), status).is_none(),
            "{code} is documented twice"
        );
    }
    codes
}

/// A status code's canonical name, as the doc writes it (`NotFound` → `NOT_FOUND`).
fn status_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[test]
fn the_doc_lists_every_reason_with_its_status() {
    let documented = documented_codes();
    for &reason in Reason::ALL {
        assert_eq!(
            documented.get(reason.as_str()),
            Some(&status_name(reason.grpc_code())),
            "docs/errors.md must list {reason} with its gRPC status"
        );
    }
}

#[test]
fn every_documented_code_is_a_reason() {
    let documented = documented_codes();
    assert_eq!(documented.len(), Reason::ALL.len());
    for code in documented.keys() {
        assert!(Reason::from_code(code).is_some(), "{code} is not a Reason");
    }
}
