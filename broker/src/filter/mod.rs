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

mod sql;

use std::collections::HashSet;

pub use sql::{Expr, Value};

use crate::store::Record;

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
    /// Parses a tag expression: `*` (or empty) for all, else tags separated by `||`.
    pub fn tags(expr: &str) -> Result<Filter, FilterError> {
        let trimmed = expr.trim();
        if trimmed.is_empty() || trimmed == "*" {
            return Ok(Filter::All);
        }
        let mut tags = HashSet::new();
        let mut position = 0;
        for part in expr.split("||") {
            let tag = part.trim();
            if tag.is_empty() || tag.contains(|c: char| c == '|' || c.is_whitespace()) || tag == "*"
            {
                // Positions count characters, like the SQL parser's.
                let at = position + part.chars().count() - part.trim_start().chars().count();
                return Err(FilterError {
                    kind: "tag",
                    position: at,
                    message: format!("expected a tag name, found {:?}", tag),
                });
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
                    record
                        .properties
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                };
                expr.eval(&lookup) == Value::Bool(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RecordFlags;

    fn record(tag: &str, props: &[(&str, &str)]) -> Record {
        Record {
            topic: "t".into(),
            queue_id: 0,
            queue_offset: 0,
            physical_offset: 0,
            born_timestamp: 0,
            store_timestamp: 0,
            flags: RecordFlags::default(),
            tag: tag.into(),
            keys: vec![],
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: bytes::Bytes::new(),
            crc: 0,
            size: 0,
        }
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
