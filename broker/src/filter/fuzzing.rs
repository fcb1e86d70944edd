//! The checks of the `filter` fuzz target (`fuzz/fuzz_targets/filter.rs`),
//! here so that `cargo test` replays the committed corpus
//! (`fuzz/corpus/filter/`) through the same code.
//!
//! An input is either filter text (any valid UTF-8, taken as it is, which keeps
//! seed files readable) or, when it is not UTF-8, a [`Program`] decoded with
//! `arbitrary` that builds an expression: leaves, NOT, parentheses, AND/OR, and
//! steps that nest or repeat a whole expression thousands of times, so a few
//! bytes reach the nesting, node and length limits. Either way both parsers
//! must refuse cleanly or give a filter that stays within the limits and that
//! evaluates, clones, prints and drops without panicking.

use arbitrary::{Arbitrary, Unstructured};

use super::{Expr, Filter, MAX_EXPRESSION_BYTES, MAX_NESTING, MAX_NODES, MAX_TAGS, MAX_TREE_DEPTH};
use crate::store::{Record, RecordFlags};

/// The longest error message a client may get for a filter: a position and a
/// short excerpt, never the input.
const MAX_ERROR_BYTES: usize = 512;

/// The most bytes a [`Program`] renders, all stack entries together: four
/// times [`MAX_EXPRESSION_BYTES`], so the length limit is exercised without
/// letting repeat steps allocate without bound.
const RENDER_BUDGET: usize = 4 * MAX_EXPRESSION_BYTES;

/// The stack of a Tokio worker thread, where the broker parses and evaluates
/// filters. The checks run on a thread of this size, so an input that would
/// overflow the broker's stack overflows here too (the fuzzer's main thread
/// usually has 8 MiB).
const BROKER_THREAD_STACK: usize = 2 * 1024 * 1024;

/// Runs every check on one fuzz input; panics (or overflows the stack) on a
/// violation.
pub fn check_filter_input(data: &[u8]) {
    std::thread::scope(|scope| {
        let checks = std::thread::Builder::new()
            .stack_size(BROKER_THREAD_STACK)
            .spawn_scoped(scope, || check(data))
            .expect("a thread for the checks");
        if let Err(panic) = checks.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

fn check(data: &[u8]) {
    match std::str::from_utf8(data) {
        Ok(text) => check_text(text, &record_from_words(text), None),
        Err(_) => {
            let Ok(program) = Program::arbitrary_take_rest(Unstructured::new(data)) else {
                return;
            };
            let built = program.render();
            let record = program.message.record();
            check_text(&built.text, &record, built.valid.then_some(built.shape));
        }
    }
}

/// Parses `text` both ways and checks the outcome; `shape` is what a valid
/// built expression must give.
fn check_text(text: &str, record: &Record, shape: Option<Shape>) {
    let sql = Filter::sql(text);
    if let Some(shape) = shape {
        let within = text.len() <= MAX_EXPRESSION_BYTES
            && shape.nesting <= MAX_NESTING
            && shape.max_nodes <= MAX_NODES;
        let beyond = text.len() > MAX_EXPRESSION_BYTES || shape.nesting > MAX_NESTING;
        assert!(!within || sql.is_ok(), "{shape:?}: refused {:?}", sql.err());
        assert!(
            !beyond || sql.is_err(),
            "{shape:?}: accepted beyond the limits"
        );
    }
    for parsed in [sql, Filter::tags(text)] {
        match parsed {
            Ok(filter) => check_filter(text, &filter, record),
            Err(e) => {
                assert!(e.position <= text.chars().count(), "{e}");
                assert!(e.to_string().len() <= MAX_ERROR_BYTES, "{e}");
            }
        }
    }
}

/// A parsed filter is within the limits, evaluates, and clones to an equal
/// copy (the comparison goes through Debug, which must work too).
fn check_filter(text: &str, filter: &Filter, record: &Record) {
    assert!(text.len() <= MAX_EXPRESSION_BYTES);
    match filter {
        Filter::All => {}
        Filter::Tags(tags) => assert!(tags.len() <= MAX_TAGS),
        Filter::Sql(expr) => {
            let (depth, nodes) = measure(expr);
            assert!(depth <= MAX_TREE_DEPTH, "{depth} levels");
            assert!(nodes <= MAX_NODES, "{nodes} nodes");
        }
    }
    let _ = filter.matches(record);
    let copy = filter.clone();
    assert_eq!(format!("{copy:?}"), format!("{filter:?}"));
}

/// A tree's depth and node count (IN values count as nodes, as the parser
/// counts them), without recursion so that the measuring cannot overflow.
pub(super) fn measure(expr: &Expr) -> (usize, usize) {
    let (mut depth, mut nodes) = (0, 0);
    let mut pending = vec![(expr, 1)];
    while let Some((e, level)) = pending.pop() {
        depth = depth.max(level);
        nodes += 1;
        match e {
            Expr::Literal(_) | Expr::Property(_) => {}
            Expr::Not(a) | Expr::IsNull(a, _) => pending.push((a, level + 1)),
            Expr::And(terms) | Expr::Or(terms) => {
                pending.extend(terms.iter().map(|t| (t, level + 1)));
            }
            Expr::Compare(_, a, b) => pending.extend([(&**a, level + 1), (b, level + 1)]),
            Expr::Between(a, low, high, _) => {
                pending.extend([(&**a, level + 1), (low, level + 1), (high, level + 1)]);
            }
            Expr::In(a, values, _) => {
                nodes += values.len();
                depth = depth.max(level + 1);
                pending.push((a, level + 1));
            }
        }
    }
    (depth, nodes)
}

/// A message for raw text: its first characters as the tag, its words as
/// property names (valued by their index, so numeric comparisons can match).
fn record_from_words(text: &str) -> Record {
    record(
        text.chars().take(8).collect(),
        text.split_whitespace()
            .take(64)
            .enumerate()
            .map(|(i, w)| (w.to_string(), i.to_string()))
            .collect(),
    )
}

/// A record with only a tag and properties: what filters look at.
pub(super) fn record(tag: String, properties: Vec<(String, String)>) -> Record {
    Record {
        topic: "t".into(),
        queue_id: 0,
        queue_offset: 0,
        physical_offset: 0,
        born_timestamp: 0,
        store_timestamp: 0,
        flags: RecordFlags::default(),
        tag,
        keys: vec![],
        properties,
        body: bytes::Bytes::new(),
        crc: 0,
        size: 0,
    }
}

/// A message to evaluate a built expression against, over the same property
/// names the expression uses.
#[derive(Debug, Arbitrary)]
struct Message {
    tag: String,
    properties: Vec<(Property, PropertyValue)>,
}

#[derive(Debug, Arbitrary)]
enum PropertyValue {
    Number(i32),
    Text(String),
    Bool(bool),
}

impl Message {
    fn record(&self) -> Record {
        let properties = self.properties.iter().map(|(name, value)| {
            let value = match value {
                PropertyValue::Number(n) => n.to_string(),
                PropertyValue::Text(s) => s.clone(),
                PropertyValue::Bool(b) => b.to_string(),
            };
            (name.name().to_string(), value)
        });
        record(self.tag.clone(), properties.collect())
    }
}

/// A stack program that builds a SQL expression (non-recursive, so decoding it
/// cannot overflow however deep the expression is).
#[derive(Debug, Arbitrary)]
struct Program {
    message: Message,
    steps: Vec<Step>,
}

#[derive(Debug, Arbitrary)]
enum Step {
    /// Pushes a test.
    Leaf(Leaf),
    /// Negates the top.
    Not,
    /// Parenthesizes the top.
    Parens,
    /// Joins the two top entries.
    Join(Joiner),
    /// Wraps the top in `times` NOTs or parentheses.
    Nest { wrapper: Wrapper, times: u16 },
    /// Replaces the top with `times` copies of it joined by the operator.
    Repeat { joiner: Joiner, times: u16 },
    /// Appends a stray token to the top: the text is no longer valid.
    Junk(Junk),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Joiner {
    And,
    Or,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Wrapper {
    Not,
    Parens,
}

#[derive(Debug, Arbitrary)]
enum Leaf {
    Compare(Property, Comparison, Literal),
    IsNull(Property, bool),
    Between(Property, Literal, Literal, bool),
    In(Property, Vec<Literal>, bool),
    Property(Property),
    Literal(Literal),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Property {
    A,
    B,
    Region,
    Tags,
    Dotted,
}

impl Property {
    fn name(self) -> &'static str {
        match self {
            Property::A => "a",
            Property::B => "b",
            Property::Region => "region",
            Property::Tags => "TAGS",
            Property::Dotted => "x.y_1",
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Comparison {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Arbitrary)]
enum Literal {
    Integer(i32),
    Decimal(i16, u8),
    Text(String),
    True,
    False,
    Null,
}

#[derive(Debug, Arbitrary)]
enum Junk {
    Open,
    Close,
    Comma,
    DoubleEquals,
    Quote,
    Keyword(Keyword),
    Text(String),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Keyword {
    And,
    Or,
    Not,
    Is,
    In,
    Between,
    Like,
}

/// What a rendered expression must parse to: its exact nesting (parentheses
/// and NOTs around its deepest part) and an upper bound of its nodes (each
/// AND/OR starts at most one node, as runs of them share one).
#[derive(Debug, Clone, Copy, Default)]
struct Shape {
    nesting: usize,
    max_nodes: usize,
}

/// One rendered stack entry.
#[derive(Debug)]
struct Part {
    text: String,
    shape: Shape,
    /// No AND or OR outside parentheses, so a NOT in front negates it whole.
    atomic: bool,
}

/// The program's final text.
#[derive(Debug)]
struct Built {
    text: String,
    shape: Shape,
    /// Whether the text is a well-formed expression (no junk, not empty).
    valid: bool,
}

impl Program {
    fn render(&self) -> Built {
        let mut stack: Vec<Part> = Vec::new();
        let mut valid = true;
        // Bytes of all entries; every step keeps it within the budget.
        let mut used = 0;
        for step in &self.steps {
            let room = RENDER_BUDGET - used;
            match step {
                Step::Leaf(leaf) => {
                    let part = leaf.render();
                    if part.text.len() <= room {
                        used += part.text.len();
                        stack.push(part);
                    }
                }
                Step::Join(joiner) => {
                    let grows = joiner.keyword().len() + 2;
                    if stack.len() >= 2 && grows <= room {
                        let right = stack.pop().expect("two entries");
                        let left = stack.pop().expect("two entries");
                        stack.push(join(left, *joiner, right));
                        used += grows;
                    }
                }
                Step::Junk(junk) => {
                    let token = junk.render();
                    if token.len() < room {
                        valid = false;
                        used += token.len() + 1;
                        match stack.last_mut() {
                            Some(top) => {
                                top.text.push(' ');
                                top.text.push_str(&token);
                            }
                            None => stack.push(Part {
                                text: format!(" {token}"),
                                shape: Shape::default(),
                                atomic: false,
                            }),
                        }
                    }
                }
                Step::Not => grow_top(&mut stack, &mut used, |top, room| {
                    wrap(top, Wrapper::Not, 1, room);
                }),
                Step::Parens => grow_top(&mut stack, &mut used, |top, room| {
                    wrap(top, Wrapper::Parens, 1, room);
                }),
                Step::Nest { wrapper, times } => grow_top(&mut stack, &mut used, |top, room| {
                    wrap(top, *wrapper, *times, room);
                }),
                Step::Repeat { joiner, times } => grow_top(&mut stack, &mut used, |top, room| {
                    repeat(top, *joiner, *times, room);
                }),
            }
        }
        let mut parts = stack.into_iter();
        let Some(first) = parts.next() else {
            return Built {
                text: String::new(),
                shape: Shape::default(),
                valid: false,
            };
        };
        let all = parts.fold(first, |left, right| join(left, Joiner::And, right));
        Built {
            text: all.text,
            shape: all.shape,
            valid,
        }
    }
}

/// Applies `change` to the top entry, telling it the room left in the budget,
/// and keeps `used` exact.
fn grow_top(stack: &mut [Part], used: &mut usize, change: impl FnOnce(&mut Part, usize)) {
    if let Some(top) = stack.last_mut() {
        let before = top.text.len();
        change(top, RENDER_BUDGET - *used);
        *used = *used - before + top.text.len();
    }
}

/// Wraps `top` in `times` NOTs or parentheses (fewer if `room` runs out).
fn wrap(top: &mut Part, wrapper: Wrapper, times: u16, room: usize) {
    let times = usize::from(times);
    match wrapper {
        Wrapper::Parens => {
            let times = times.min(room / 2);
            top.text = format!("{}{}{}", "(".repeat(times), top.text, ")".repeat(times));
            top.shape.nesting += times;
            top.atomic |= times > 0;
        }
        Wrapper::Not => {
            // A NOT in front of `x AND y` negates only `x`: parenthesize first.
            let grouping = usize::from(!top.atomic);
            let times = times.min(room.saturating_sub(2 * grouping) / 4);
            if times == 0 {
                return;
            }
            let inner = if top.atomic {
                std::mem::take(&mut top.text)
            } else {
                format!("({})", top.text)
            };
            top.text = format!("{}{inner}", "NOT ".repeat(times));
            top.shape.nesting += times + grouping;
            top.shape.max_nodes += times;
            top.atomic = true;
        }
    }
}

fn join(left: Part, joiner: Joiner, right: Part) -> Part {
    Part {
        text: format!("{} {} {}", left.text, joiner.keyword(), right.text),
        shape: Shape {
            nesting: left.shape.nesting.max(right.shape.nesting),
            max_nodes: left.shape.max_nodes + right.shape.max_nodes + 1,
        },
        atomic: false,
    }
}

/// Replaces `top` with `times` copies of it joined by `joiner` (fewer if
/// `room` runs out).
fn repeat(top: &mut Part, joiner: Joiner, times: u16, room: usize) {
    let separator = format!(" {} ", joiner.keyword());
    let each = top.text.len() + separator.len();
    let times = usize::from(times).min(room / each + 1);
    if times <= 1 {
        return;
    }
    top.text = vec![top.text.as_str(); times].join(&separator);
    top.shape.max_nodes = top.shape.max_nodes * times + (times - 1);
    top.atomic = false;
}

impl Joiner {
    fn keyword(self) -> &'static str {
        match self {
            Joiner::And => "AND",
            Joiner::Or => "OR",
        }
    }
}

impl Leaf {
    fn render(&self) -> Part {
        let (text, max_nodes) = match self {
            Leaf::Compare(p, cmp, lit) => {
                (format!("{} {} {}", p.name(), cmp.op(), lit.render()), 3)
            }
            Leaf::IsNull(p, negated) => {
                let not = if *negated { "NOT " } else { "" };
                (format!("{} IS {not}NULL", p.name()), 2)
            }
            Leaf::Between(p, low, high, negated) => {
                let not = if *negated { "NOT " } else { "" };
                let (low, high) = (low.render(), high.render());
                (format!("{} {not}BETWEEN {low} AND {high}", p.name()), 4)
            }
            Leaf::In(p, values, negated) => {
                let not = if *negated { "NOT " } else { "" };
                let mut list: Vec<String> = values.iter().map(Literal::render).collect();
                if list.is_empty() {
                    list.push("NULL".into());
                }
                let nodes = 2 + list.len();
                (format!("{} {not}IN ({})", p.name(), list.join(", ")), nodes)
            }
            Leaf::Property(p) => (p.name().to_string(), 1),
            Leaf::Literal(lit) => (lit.render(), 1),
        };
        Part {
            text,
            shape: Shape {
                nesting: 0,
                max_nodes,
            },
            atomic: true,
        }
    }
}

impl Comparison {
    fn op(self) -> &'static str {
        match self {
            Comparison::Eq => "=",
            Comparison::Ne => "<>",
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
        }
    }
}

impl Literal {
    fn render(&self) -> String {
        match self {
            Literal::Integer(n) => n.to_string(),
            Literal::Decimal(whole, fraction) => format!("{whole}.{fraction}"),
            Literal::Text(s) => format!("'{}'", s.replace('\'', "''")),
            Literal::True => "TRUE".into(),
            Literal::False => "FALSE".into(),
            Literal::Null => "NULL".into(),
        }
    }
}

impl Junk {
    fn render(&self) -> String {
        match self {
            Junk::Open => "(".into(),
            Junk::Close => ")".into(),
            Junk::Comma => ",".into(),
            Junk::DoubleEquals => "==".into(),
            Junk::Quote => "'".into(),
            Junk::Keyword(k) => format!("{k:?}").to_uppercase(),
            Junk::Text(s) => s.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed seed corpus of the fuzz target, replayed.
    #[test]
    fn the_fuzz_corpus_replays_cleanly() {
        crate::fuzz_corpus::replay("filter", 24, check_filter_input);
    }
}
