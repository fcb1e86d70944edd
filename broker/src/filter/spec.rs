//! A filter as a client or a group declares it: its kind and its text. Kept
//! beside the parsed [`Filter`] because a group's subscription is persisted and
//! reported as written, while two specs are compared by what they match.

use serde::{Deserialize, Serialize};

use super::{Filter, FilterError};

/// The language of a filter expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterKind {
    /// `*` or empty (everything), or `TagA || TagB`.
    #[default]
    Tag,
    /// SQL92 over user properties and the tag.
    Sql,
}

/// A filter expression of a kind.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FilterSpec {
    pub kind: FilterKind,
    pub expression: String,
}

impl FilterSpec {
    /// The filter that passes everything.
    pub fn all() -> FilterSpec {
        FilterSpec::default()
    }

    /// A tag expression.
    pub fn tags(expression: &str) -> FilterSpec {
        FilterSpec {
            kind: FilterKind::Tag,
            expression: expression.to_string(),
        }
    }

    /// A SQL92 expression.
    pub fn sql(expression: &str) -> FilterSpec {
        FilterSpec {
            kind: FilterKind::Sql,
            expression: expression.to_string(),
        }
    }

    /// Parses the expression.
    pub fn parse(&self) -> Result<Filter, FilterError> {
        match self.kind {
            FilterKind::Tag => Filter::tags(&self.expression),
            FilterKind::Sql => Filter::sql(&self.expression),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_to_what_they_match() {
        assert_eq!(FilterSpec::all().parse().unwrap(), Filter::All);
        assert_eq!(FilterSpec::tags(" * ").parse().unwrap(), Filter::All);
        assert_eq!(
            FilterSpec::tags("B || A").parse().unwrap(),
            FilterSpec::tags(" A||B ").parse().unwrap()
        );
        assert_eq!(
            FilterSpec::sql("a = 1").parse().unwrap(),
            FilterSpec::sql(" a=1 ").parse().unwrap()
        );
        assert_eq!(FilterSpec::sql("a =").parse().unwrap_err().position, 3);
    }
}
