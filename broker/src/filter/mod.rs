//! Message filters, evaluated by the broker before delivery: tag expressions
//! (`*`, `TagA || TagB`) and SQL92 expressions over user properties and the tag
//! (`TAGS`). A message is delivered when the filter is TRUE; SQL uses
//! three-valued logic, so a comparison with a missing property is UNKNOWN and
//! the message is not delivered (as in SQL `WHERE`).
//!
//! SQL grammar (keywords are case-insensitive):
//!
//! ```text
//!  expr    := and ( OR and )*
//!  and     := not ( AND not )*
//!  not     := NOT not | test
//!  test    := operand [ (= | <> | < | <= | > | >=) operand
//!                     | IS [NOT] NULL
//!                     | [NOT] BETWEEN operand AND operand
//!                     | [NOT] IN ( literal {, literal} ) ]
//!  operand := ( expr ) | literal | identifier
//!  literal := 'string' ('' escapes a quote) | number | TRUE | FALSE | NULL
//! ```
//!
//! Filters come from any client, so their size is limited (the constants
//! below) and the parser refuses an input as soon as it passes a limit, before
//! it recurses or allocates further: no filter can exhaust the broker's stack
//! or make each delivery's evaluation expensive.

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod spec;
mod sql;

use std::collections::HashSet;

pub use spec::{FilterKind, FilterSpec};
pub use sql::{Expr, Value};

use crate::messaging::properties;
use crate::store::Record;

/// The longest filter expression, in bytes (tag or SQL). Real filters are tens
/// to hundreds of bytes; 16 KiB, four times RabbitMQ's 4,096-character limit
/// for its SQL filters, holds the largest expressions the node limit allows
/// written with short names, while bounding what the broker tokenizes and
/// keeps per subscription.
pub const MAX_EXPRESSION_BYTES: usize = 16 * 1024;

/// The deepest nesting of a SQL expression: each parenthesis and each NOT opens
/// one level. Hand-written filters nest a few levels. The parser recurses about
/// five frames per level and the tree is at most [`MAX_TREE_DEPTH`] deep, so at
/// 64 levels parsing, evaluating, cloning, printing and dropping take under 512
/// KiB of stack even in a debug build (tested), a quarter of the 2 MiB of a
/// Tokio worker thread.
pub const MAX_NESTING: usize = 64;

/// How deep a parsed SQL tree can be: each nesting level adds at most an OR, an
/// AND and a comparison above the next level, and the innermost level ends in a
/// property or literal below those three.
pub const MAX_TREE_DEPTH: usize = 3 * MAX_NESTING + 4;

/// The most nodes of a SQL expression (properties, literals including each IN
/// value, and operators; a run of ANDs or ORs is one node). Every delivery
/// evaluates the whole tree, so this bounds the work per message; 1,024 is far
/// more than a hand-written filter needs (RabbitMQ allows 200 tokens).
pub const MAX_NODES: usize = 1024;

/// The most tags in a tag expression (`TagA || TagB || …`), the same budget as
/// [`MAX_NODES`]: matching is a set lookup, so this bounds memory only.
pub const MAX_TAGS: usize = 1024;

/// How many characters of the input an error message quotes at most: errors
/// name a position instead of echoing what a client sent.
const MAX_QUOTED_CHARS: usize = 32;

/// A filter that could not be parsed: what is wrong and where (0-based
/// character position in the expression).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} filter at position {position}: {message}")]
pub struct FilterError {
    pub kind: &'static str,
    pub position: usize,
    pub message: String,
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Everything passes.
    All,
    /// Messages whose tag is one of these.
    Tags(HashSet<String>),
    /// Messages for which the expression is TRUE.
    Sql(Expr),
}

impl Filter {
    /// Parses a tag expression: `*` (or empty) for all, else tags separated by
    /// `||` (at most [`MAX_TAGS`], [`MAX_EXPRESSION_BYTES`] in all).
    pub fn tags(expr: &str) -> Result<Filter, FilterError> {
        check_length("tag", expr)?;
        let trimmed = expr.trim();
        if trimmed.is_empty() || trimmed == "*" {
            return Ok(Filter::All);
        }
        let mut tags = HashSet::new();
        let mut position = 0;
        for (index, part) in expr.split("||").enumerate() {
            let tag = part.trim();
            // Positions count characters, like the SQL parser's.
            let at = position + part.chars().count() - part.trim_start().chars().count();
            let refusal = |message: String| FilterError {
                kind: "tag",
                position: at,
                message,
            };
            if index == MAX_TAGS {
                return Err(refusal(format!("more than {MAX_TAGS} tags")));
            }
            if tag.is_empty() || tag.contains(|c: char| c == '|' || c.is_whitespace()) || tag == "*"
            {
                return Err(refusal(format!(
                    "expected a tag name, found {:?}",
                    excerpt(tag)
                )));
            }
            tags.insert(tag.to_string());
            position += part.chars().count() + 2;
        }
        Ok(Filter::Tags(tags))
    }

    /// Parses a SQL92 expression.
    pub fn sql(expr: &str) -> Result<Filter, FilterError> {
        sql::parse(expr).map(Filter::Sql)
    }

    /// Whether a message passes.
    pub fn matches(&self, record: &Record) -> bool {
        match self {
            Filter::All => true,
            Filter::Tags(tags) => tags.contains(&record.tag),
            Filter::Sql(expr) => {
                let lookup = |name: &str| -> Option<String> {
                    if name.eq_ignore_ascii_case("TAGS") {
                        return (!record.tag.is_empty()).then(|| record.tag.clone());
                    }
                    properties::lookup(&record.properties, name).map(str::to_string)
                };
                expr.eval(&lookup) == Value::Bool(true)
            }
        }
    }
}

/// Refuses an expression longer than [`MAX_EXPRESSION_BYTES`], at the first
/// character past the limit.
fn check_length(kind: &'static str, expr: &str) -> Result<(), FilterError> {
    if expr.len() <= MAX_EXPRESSION_BYTES {
        return Ok(());
    }
    let mut fits = MAX_EXPRESSION_BYTES;
    while !expr.is_char_boundary(fits) {
        fits -= 1;
    }
    Err(FilterError {
        kind,
        position: expr[..fits].chars().count(),
        message: format!(
            "the expression is {} bytes, more than the {MAX_EXPRESSION_BYTES} allowed",
            expr.len()
        ),
    })
}

/// `text` for an error message: its first [`MAX_QUOTED_CHARS`] characters,
/// and `…` when there are more.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tag: &str, props: &[(&str, &str)]) -> Record {
        super::fuzzing::record(
            tag.into(),
            props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn tag_expressions() {
        assert_eq!(Filter::tags("*").unwrap(), Filter::All);
        assert_eq!(Filter::tags("").unwrap(), Filter::All);
        let f = Filter::tags("TagA || TagB").unwrap();
        assert!(f.matches(&record("TagA", &[])));
        assert!(f.matches(&record("TagB", &[])));
        assert!(!f.matches(&record("TagC", &[])));
        assert!(!f.matches(&record("", &[])));
        let e = Filter::tags("TagA || ").unwrap_err();
        assert_eq!(e.position, 8);
        // Found by the fuzzer: positions are in characters, not bytes.
        let e = Filter::tags("é || \u{a0}").unwrap_err();
        assert_eq!(e.position, 6, "the end of the 6-character expression");
        assert!(Filter::tags("A ||| B").is_err());
        assert!(Filter::tags("A B").is_err());
    }

    #[test]
    fn sql_expressions() {
        let r = record(
            "red",
            &[
                ("a", "5"),
                ("region", "eu"),
                ("vip", "true"),
                ("price", "9.5"),
            ],
        );
        let cases = [
            ("a = 5", true),
            ("a > 4 AND a < 6", true),
            ("a >= 5 AND a <= 5", true),
            ("a <> 5", false),
            ("region = 'eu'", true),
            ("region <> 'us'", true),
            ("region IN ('us', 'eu')", true),
            ("region NOT IN ('us', 'eu')", false),
            ("a BETWEEN 1 AND 5", true),
            ("a NOT BETWEEN 1 AND 4", true),
            ("missing IS NULL", true),
            ("a IS NOT NULL", true),
            ("missing = 1", false),
            ("NOT (missing = 1)", false),
            ("missing = 1 OR a = 5", true),
            ("vip = TRUE", true),
            ("TAGS = 'red'", true),
            ("price > 9.25", true),
            ("a > -1", true),
            ("(a = 1 OR a = 5) AND NOT region = 'us'", true),
            ("region = 'it''s'", false),
            ("region > 'ea'", true),
        ];
        for (expr, want) in cases {
            let f = Filter::sql(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert_eq!(f.matches(&r), want, "{expr}");
        }
    }

    #[test]
    fn sql_finds_the_sharding_key_under_either_name_on_old_and_new_records() {
        let old = record("", &[("SHARDING_KEY", "k")]);
        let new = record("", &[("__SHARDING_KEY", "k")]);
        for expr in ["SHARDING_KEY = 'k'", "__SHARDING_KEY = 'k'"] {
            let f = Filter::sql(expr).unwrap();
            assert!(f.matches(&old), "{expr} on an old record");
            assert!(f.matches(&new), "{expr} on a new record");
        }
    }

    #[test]
    fn sql_errors_name_the_position() {
        for (expr, position) in [
            ("a = ", 4),
            ("a = 'open", 4),
            ("(a = 1", 6),
            ("a IN ()", 6),
            ("a BETWEEN 1", 11),
            ("a == 1", 2),
            ("a = 1 b", 6),
            ("", 0),
            ("a IS 5", 5),
        ] {
            let e = Filter::sql(expr).unwrap_err();
            assert_eq!(e.position, position, "{expr}: {e}");
            assert_eq!(e.kind, "SQL");
        }
    }

    /// The audit's inputs (issue #13, item 1), each of which overflowed the
    /// broker's stack: refused with a position and a short message.
    #[test]
    fn the_audit_inputs_are_refused_cleanly() {
        let parens = format!("{}a = 1{}", "(".repeat(2_000), ")".repeat(2_000));
        let nots = format!("{}a = 1", "NOT ".repeat(18_500));
        let ands = vec!["a = 1"; 32_000].join(" AND ");
        for (input, position, reason) in [
            (&parens, MAX_NESTING, "nested deeper than 64 levels"),
            (&nots, MAX_EXPRESSION_BYTES, "74005 bytes"),
            (&ands, MAX_EXPRESSION_BYTES, "319995 bytes"),
        ] {
            let e = Filter::sql(input).unwrap_err();
            assert_eq!((e.kind, e.position), ("SQL", position), "{e}");
            assert!(e.message.contains(reason), "{e}");
            assert!(e.to_string().len() < 200, "{e}");
        }
    }

    #[test]
    fn nesting_is_limited_at_each_parenthesis_and_not() {
        let parens = |n: usize| format!("{}a = 1{}", "(".repeat(n), ")".repeat(n));
        let nots = |n: usize| format!("{}a = 1", "NOT ".repeat(n));
        let mixed = |n: usize| format!("{}a = 1{}", "NOT (".repeat(n), ")".repeat(n));
        for ok in [
            parens(MAX_NESTING),
            nots(MAX_NESTING),
            mixed(MAX_NESTING / 2),
        ] {
            Filter::sql(&ok).unwrap_or_else(|e| panic!("{e}"));
        }
        for (refused, position) in [
            (parens(MAX_NESTING + 1), MAX_NESTING),
            (nots(MAX_NESTING + 1), 4 * MAX_NESTING),
            (mixed(MAX_NESTING / 2 + 1), 5 * MAX_NESTING / 2),
        ] {
            let e = Filter::sql(&refused).unwrap_err();
            assert_eq!(e.position, position, "{e}");
            assert_eq!(
                e.message,
                "nested deeper than 64 levels (each parenthesis or NOT is one)"
            );
        }
    }

    #[test]
    fn node_count_is_limited() {
        // Three nodes per comparison, plus one for the whole run of ANDs.
        let comparisons = |n: usize| vec!["a = 1"; n].join(" AND ");
        let fitting = (MAX_NODES - 1) / 3;
        assert_eq!(fitting, 341);
        Filter::sql(&comparisons(fitting)).unwrap_or_else(|e| panic!("{e}"));
        let e = Filter::sql(&comparisons(fitting + 1)).unwrap_err();
        assert_eq!(e.position, fitting * "a = 1 AND ".len(), "{e}");
        assert!(e.message.starts_with("more than 1024 nodes"), "{e}");
        // Each IN value is a node too (with the property and the IN).
        let list = |n: usize| format!("a IN ({})", vec!["1"; n].join(", "));
        Filter::sql(&list(MAX_NODES - 2)).unwrap_or_else(|e| panic!("{e}"));
        let e = Filter::sql(&list(MAX_NODES - 1)).unwrap_err();
        assert_eq!(e.position, "a IN (".len() + (MAX_NODES - 2) * "1, ".len());
    }

    #[test]
    fn length_is_limited_in_bytes() {
        let padded = |len: usize| format!("a = '{}'", "x".repeat(len - 6));
        for (kind, parse) in [("SQL", Filter::sql as fn(&str) -> _), ("tag", Filter::tags)] {
            let fitting = if kind == "SQL" {
                padded(MAX_EXPRESSION_BYTES)
            } else {
                "T".repeat(MAX_EXPRESSION_BYTES)
            };
            assert_eq!(fitting.len(), MAX_EXPRESSION_BYTES);
            parse(&fitting).unwrap_or_else(|e| panic!("{e}"));
            let e = parse(&format!("{fitting} ")).unwrap_err();
            assert_eq!((e.kind, e.position), (kind, MAX_EXPRESSION_BYTES), "{e}");
            assert_eq!(
                e.message,
                "the expression is 16385 bytes, more than the 16384 allowed"
            );
            // Positions count characters: 8,192 two-byte characters fit.
            let wide = "é".repeat(MAX_EXPRESSION_BYTES / 2 + 1);
            assert_eq!(parse(&wide).unwrap_err().position, 8_192);
        }
    }

    #[test]
    fn tag_count_is_limited() {
        let tags = |n: usize| {
            let names: Vec<String> = (0..n).map(|i| format!("T{i}")).collect();
            names.join(" || ")
        };
        let Filter::Tags(set) = Filter::tags(&tags(MAX_TAGS)).unwrap() else {
            panic!("a tag set");
        };
        assert_eq!(set.len(), MAX_TAGS);
        let refused = tags(MAX_TAGS + 1);
        let e = Filter::tags(&refused).unwrap_err();
        assert_eq!(e.position, refused.rfind("T1024").unwrap(), "{e}");
        assert_eq!(e.message, "more than 1024 tags");
    }

    #[test]
    fn errors_quote_at_most_a_short_excerpt() {
        let long = "x".repeat(10_000);
        for e in [
            Filter::sql(&format!("a = 1 {long}")),
            Filter::sql(&format!("a = 1 '{long}'")),
            Filter::sql(&format!("a = 1.2.{}", "3".repeat(10_000))),
            Filter::tags(&format!("A || {long} B")),
        ] {
            let e = e.unwrap_err();
            assert!(e.message.contains("…"), "{e}");
            assert!(e.to_string().len() < 200, "{e}");
        }
    }

    /// The deepest tree the limits allow parses, evaluates, clones, prints
    /// and drops on a thread with a quarter of a Tokio worker's stack.
    #[test]
    fn the_deepest_tree_fits_in_a_small_stack() {
        // Each level: an OR, an AND and a comparison above the next level.
        let mut deepest = "b OR c AND a = 1".to_string();
        for _ in 0..MAX_NESTING {
            deepest = format!("b OR c AND ({deepest}) = 1");
        }
        let on_small_stack = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || {
                let filter = Filter::sql(&deepest).unwrap_or_else(|e| panic!("{e}"));
                let Filter::Sql(expr) = &filter else {
                    panic!("a SQL filter");
                };
                assert_eq!(fuzzing::measure(expr).0, MAX_TREE_DEPTH);
                assert!(!filter.matches(&record("", &[("a", "1"), ("b", "0")])));
                let copy = filter.clone();
                assert_eq!(format!("{copy:?}"), format!("{filter:?}"));
            })
            .unwrap();
        on_small_stack.join().expect("no stack overflow");
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(s in "\\PC{0,40}") {
            let _ = Filter::sql(&s);
            let _ = Filter::tags(&s);
        }

        #[test]
        fn parsing_expression_shaped_text_never_panics(
            parts in proptest::collection::vec(
                proptest::sample::select(vec!["a", "b", "=", "<>", "<", ">=", "AND", "OR", "NOT", "(", ")", "IN", "BETWEEN", "IS", "NULL", "1", "-2.5", "'x'", ",", "TRUE"]),
                0..12,
            )
        ) {
            let expr = parts.join(" ");
            if let Ok(Filter::Sql(e)) = Filter::sql(&expr) {
                let _ = e.eval(&|_| Some("1".to_string()));
                let _ = e.eval(&|_| None);
            }
        }
    }
}
