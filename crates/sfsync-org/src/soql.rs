//! SOQL: a hand-written tokenizer and recursive-descent parser for the subset integration tools
//! send, and an evaluator over the org's record tables.
//!
//! Supported: `SELECT` fields, parent paths (`Account.Owner.Name`), compound fields
//! (`BillingAddress`, Contact `Name`), `FIELDS(ALL|STANDARD|CUSTOM)`, `COUNT()` and
//! `COUNT(field)`; `FROM` one object; `WHERE` with `AND`/`OR`/`NOT`, parentheses, `= != <> < <= >
//! >=`, `[NOT] IN (…)`, `LIKE` (`%`, `_`, case-insensitive), `= null`/`!= null`; literals:
//! strings with escapes, numbers, `true`/`false`, dates, datetimes in every ISO form, `TODAY`,
//! `YESTERDAY`, `TOMORROW`, `LAST_N_DAYS:n`, `NEXT_N_DAYS:n`; `ORDER BY` with `ASC`/`DESC` and
//! `NULLS FIRST|LAST`; `LIMIT`; `OFFSET`. Keywords and names are case-insensitive.
//!
//! Guarantees: [`parse`] never panics, whatever the input; every error is a `MALFORMED_QUERY`,
//! `INVALID_FIELD`, `INVALID_TYPE` or `INVALID_QUERY_FILTER_OPERATOR` whose message names the
//! line and column. Evaluation resolves every name once before scanning rows, so the row loop does
//! no name lookups and no per-row allocation beyond the output values.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value;
use sfsync_core::SfId;

use crate::org::{QueryRelation, QueryResult};
use crate::store::{CObject, FKind, Record, State};
use crate::value::{parse_datetime, Val};
use crate::{FieldType, SfError};

// ---------------------------------------------------------------------------------------------
// AST

/// A position in the query text (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A dotted field path as written (`Account.Name`).
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    pub parts: Vec<String>,
    pub pos: Pos,
}

impl Path {
    pub fn text(&self) -> String {
        self.parts.join(".")
    }
}

/// One select-list item.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    Field(Path),
    /// `COUNT()` (None) or `COUNT(field)`.
    Count(Option<Path>, Pos),
    /// `FIELDS(ALL)`, `FIELDS(STANDARD)`, `FIELDS(CUSTOM)`.
    Fields(String, Pos),
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Relative date literals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelDate {
    Today,
    Yesterday,
    Tomorrow,
    LastNDays(u32),
    NextNDays(u32),
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Number(f64),
    /// The unescaped value and the raw text between the quotes (LIKE needs the escapes).
    String(String, String),
    /// Days since 1970-01-01.
    Date(i32),
    /// Epoch milliseconds.
    DateTime(i64),
    Relative(RelDate),
}

/// A WHERE condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
    Compare {
        path: Path,
        op: CmpOp,
        value: Literal,
        pos: Pos,
    },
    In {
        path: Path,
        negated: bool,
        values: Vec<Literal>,
        pos: Pos,
    },
    Like {
        path: Path,
        pattern: String,
        pos: Pos,
    },
}

/// One ORDER BY key.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderBy {
    pub path: Path,
    pub descending: bool,
    /// Explicit `NULLS FIRST` (Some(true)) / `NULLS LAST` (Some(false)).
    pub nulls_first: Option<bool>,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub select: Vec<SelectItem>,
    pub from: String,
    pub from_pos: Pos,
    pub filter: Option<Cond>,
    pub order_by: Vec<OrderBy>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

#[derive(Debug, Clone, PartialEq)]
enum T {
    Ident(String),
    Str(String, String),
    Num(f64),
    Date(i32),
    DateTime(i64),
    Sym(&'static str),
    Eof,
}

#[derive(Debug, Clone)]
struct Tok {
    t: T,
    pos: Pos,
    text: String,
}

fn error_at(src: &str, pos: Pos, code: &str, msg: &str) -> SfError {
    let line_text = src.lines().nth(pos.line.saturating_sub(1)).unwrap_or("");
    let caret: String = " ".repeat(pos.column.saturating_sub(1).min(1000)) + "^";
    let line_text: String = line_text.chars().take(2000).collect();
    SfError::new(
        400,
        code,
        format!(
            "{msg} at line {} column {}\n{line_text}\n{caret}\nERROR at Row:{}:Column:{}",
            pos.line, pos.column, pos.line, pos.column
        ),
    )
}

fn malformed(src: &str, pos: Pos, msg: &str) -> SfError {
    error_at(src, pos, "MALFORMED_QUERY", msg)
}

fn lex(src: &str) -> Result<Vec<Tok>, SfError> {
    let chars: Vec<(usize, char)> = src.char_indices().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let mut col = 1;
    let at = |k: usize| chars.get(k).map(|c| c.1);
    let offset = |k: usize| chars.get(k).map(|c| c.0).unwrap_or(src.len());
    while i < chars.len() {
        let c = chars[i].1;
        let pos = Pos { line, column: col };
        let start = i;
        if c == '\n' {
            line += 1;
            col = 1;
            i += 1;
            continue;
        }
        if c.is_whitespace() {
            i += 1;
            col += 1;
            continue;
        }
        let t = if c.is_ascii_alphabetic() || c == '_' {
            while let Some(ch) = at(i) {
                let dotted =
                    ch == '.' && at(i + 1).is_some_and(|n| n.is_ascii_alphabetic() || n == '_');
                if ch.is_ascii_alphanumeric() || ch == '_' || dotted {
                    i += 1;
                } else {
                    break;
                }
            }
            T::Ident(src[offset(start)..offset(i)].to_string())
        } else if c.is_ascii_digit() {
            let is_date = (0..4).all(|k| at(i + k).is_some_and(|d| d.is_ascii_digit()))
                && at(i + 4) == Some('-')
                && at(i + 5).is_some_and(|d| d.is_ascii_digit())
                && at(i + 6).is_some_and(|d| d.is_ascii_digit())
                && at(i + 7) == Some('-');
            if is_date {
                while let Some(ch) = at(i) {
                    if ch.is_ascii_digit()
                        || matches!(ch, '-' | ':' | '.' | '+' | 'T' | 't' | 'Z' | 'z')
                    {
                        i += 1;
                    } else {
                        break;
                    }
                }
                let text = &src[offset(start)..offset(i)];
                if text.len() == 10 {
                    match crate::value::parse_date(text) {
                        Some(d) => T::Date(d),
                        None => {
                            return Err(malformed(src, pos, &format!("invalid date: '{text}'")))
                        }
                    }
                } else {
                    match parse_datetime(text) {
                        Some(ms) if text.len() > 19 || text.ends_with(['Z', 'z']) => {
                            T::DateTime(ms)
                        }
                        Some(ms) => T::DateTime(ms),
                        None => {
                            return Err(malformed(
                                src,
                                pos,
                                &format!("invalid date or datetime literal: '{text}'"),
                            ))
                        }
                    }
                }
            } else {
                while at(i).is_some_and(|d| d.is_ascii_digit()) {
                    i += 1;
                }
                if at(i) == Some('.') && at(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                    i += 1;
                    while at(i).is_some_and(|d| d.is_ascii_digit()) {
                        i += 1;
                    }
                }
                let text = &src[offset(start)..offset(i)];
                match text.parse::<f64>() {
                    Ok(n) => T::Num(n),
                    Err(_) => {
                        return Err(malformed(src, pos, &format!("invalid number: '{text}'")))
                    }
                }
            }
        } else if c == '\'' || c == '"' {
            let quote = c;
            i += 1;
            let mut v = String::new();
            let raw_start = offset(i);
            loop {
                let Some(ch) = at(i) else {
                    return Err(malformed(src, pos, "unterminated string literal"));
                };
                if ch == quote {
                    break;
                }
                if ch == '\n' {
                    line += 1;
                    col = 0;
                }
                if ch == '\\' {
                    let Some(e) = at(i + 1) else {
                        return Err(malformed(src, pos, "unterminated string literal"));
                    };
                    v.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        '\'' | '"' | '\\' | '%' | '_' => e,
                        other => {
                            return Err(malformed(
                                src,
                                pos,
                                &format!("invalid escape sequence in string literal: '\\{other}'"),
                            ))
                        }
                    });
                    i += 2;
                    col += 2;
                    continue;
                }
                v.push(ch);
                i += 1;
                col += 1;
            }
            let raw = src[raw_start..offset(i)].to_string();
            i += 1;
            col += 1;
            toks.push(Tok {
                t: T::Str(v, raw),
                pos,
                text: src[offset(start)..offset(i)].to_string(),
            });
            continue;
        } else {
            let two: String = [Some(c), at(i + 1)].iter().flatten().collect();
            let sym: &'static str = match two.as_str() {
                "!=" => "!=",
                "<>" => "<>",
                "<=" => "<=",
                ">=" => ">=",
                _ => match c {
                    '=' => "=",
                    '<' => "<",
                    '>' => ">",
                    '(' => "(",
                    ')' => ")",
                    ',' => ",",
                    ':' => ":",
                    '-' => "-",
                    '+' => "+",
                    '*' => "*",
                    '.' => ".",
                    _ => return Err(malformed(src, pos, &format!("unexpected character: '{c}'"))),
                },
            };
            i += sym.chars().count();
            T::Sym(sym)
        };
        col += i - start;
        toks.push(Tok {
            t,
            pos,
            text: src[offset(start)..offset(i)].to_string(),
        });
    }
    toks.push(Tok {
        t: T::Eof,
        pos: Pos { line, column: col },
        text: String::new(),
    });
    Ok(toks)
}

// ---------------------------------------------------------------------------------------------
// Parser

const RESERVED: &[&str] = &[
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "ORDER", "BY", "LIMIT", "OFFSET",
    "ASC", "DESC", "NULLS", "FIRST", "LAST", "NULL", "TRUE", "FALSE", "GROUP", "HAVING", "WITH",
    "FOR", "INCLUDES", "EXCLUDES",
];

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Tok>,
    i: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &Tok {
        &self.toks[self.i.min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn unexpected(&self) -> SfError {
        let t = self.peek();
        match t.t {
            T::Eof => malformed(self.src, t.pos, "unexpected end of query"),
            _ => malformed(self.src, t.pos, &format!("unexpected token: '{}'", t.text)),
        }
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.peek().t, T::Ident(s) if s.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), SfError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            let t = self.peek();
            Err(match t.t {
                T::Eof => malformed(
                    self.src,
                    t.pos,
                    &format!("unexpected end of query: expecting '{kw}'"),
                ),
                _ => malformed(
                    self.src,
                    t.pos,
                    &format!("unexpected token: '{}' (expecting '{kw}')", t.text),
                ),
            })
        }
    }

    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek().t, T::Sym(x) if x == s)
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if self.is_sym(s) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, s: &str) -> Result<(), SfError> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            let t = self.peek();
            Err(match t.t {
                T::Eof => malformed(
                    self.src,
                    t.pos,
                    &format!("unexpected end of query: expecting '{s}'"),
                ),
                _ => malformed(
                    self.src,
                    t.pos,
                    &format!("unexpected token: '{}' (expecting '{s}')", t.text),
                ),
            })
        }
    }

    fn path(&mut self) -> Result<Path, SfError> {
        let t = self.peek().clone();
        match &t.t {
            T::Ident(s) if !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(s)) => {
                self.i += 1;
                Ok(Path {
                    parts: s.split('.').map(str::to_string).collect(),
                    pos: t.pos,
                })
            }
            _ => Err(self.unexpected()),
        }
    }

    fn query(&mut self) -> Result<Query, SfError> {
        self.expect_kw("SELECT")?;
        let mut select = Vec::new();
        loop {
            let t = self.peek().clone();
            let is_call = matches!(self.toks.get(self.i + 1).map(|t| &t.t), Some(T::Sym("(")));
            if self.is_kw("COUNT") && is_call {
                self.i += 2;
                let arg = if self.is_sym(")") {
                    None
                } else {
                    Some(self.path()?)
                };
                self.expect_sym(")")?;
                select.push(SelectItem::Count(arg, t.pos));
            } else if self.is_kw("FIELDS") && is_call {
                self.i += 2;
                let kind = match &self.peek().t {
                    T::Ident(s)
                        if ["ALL", "STANDARD", "CUSTOM"]
                            .iter()
                            .any(|k| k.eq_ignore_ascii_case(s)) =>
                    {
                        s.to_ascii_uppercase()
                    }
                    _ => return Err(self.unexpected()),
                };
                self.i += 1;
                self.expect_sym(")")?;
                select.push(SelectItem::Fields(kind, t.pos));
            } else {
                select.push(SelectItem::Field(self.path()?));
            }
            if !self.eat_sym(",") {
                break;
            }
        }
        self.expect_kw("FROM")?;
        let from_tok = self.peek().clone();
        let from = match &from_tok.t {
            T::Ident(s)
                if !s.contains('.') && !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(s)) =>
            {
                self.i += 1;
                s.clone()
            }
            _ => return Err(self.unexpected()),
        };
        let filter = if self.eat_kw("WHERE") {
            Some(self.or()?)
        } else {
            None
        };
        let mut order_by = Vec::new();
        if self.eat_kw("ORDER") {
            self.expect_kw("BY")?;
            loop {
                let path = self.path()?;
                let descending = if self.eat_kw("DESC") {
                    true
                } else {
                    self.eat_kw("ASC");
                    false
                };
                let nulls_first = if self.eat_kw("NULLS") {
                    if self.eat_kw("FIRST") {
                        Some(true)
                    } else if self.eat_kw("LAST") {
                        Some(false)
                    } else {
                        return Err(self.unexpected());
                    }
                } else {
                    None
                };
                order_by.push(OrderBy {
                    path,
                    descending,
                    nulls_first,
                });
                if !self.eat_sym(",") {
                    break;
                }
            }
        }
        let mut limit = None;
        let mut offset = None;
        if self.eat_kw("LIMIT") {
            limit = Some(self.count_value()?);
        }
        if self.eat_kw("OFFSET") {
            offset = Some(self.count_value()?);
        }
        if self.eat_kw("FOR")
            && !(self.eat_kw("VIEW") || self.eat_kw("REFERENCE") || self.eat_kw("UPDATE"))
        {
            return Err(self.unexpected());
        }
        if !matches!(self.peek().t, T::Eof) {
            return Err(self.unexpected());
        }
        Ok(Query {
            select,
            from,
            from_pos: from_tok.pos,
            filter,
            order_by,
            limit,
            offset,
        })
    }

    fn count_value(&mut self) -> Result<u64, SfError> {
        let t = self.next();
        match t.t {
            T::Num(n) if n >= 0.0 && n.fract() == 0.0 && n < 1e15 => Ok(n as u64),
            _ => Err(malformed(
                self.src,
                t.pos,
                &format!("expecting a non-negative integer, found '{}'", t.text),
            )),
        }
    }

    fn enter(&mut self) -> Result<(), SfError> {
        self.depth += 1;
        if self.depth > 100 {
            return Err(malformed(
                self.src,
                self.peek().pos,
                "condition nested too deeply",
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Cond, SfError> {
        self.enter()?;
        let mut parts = vec![self.and()?];
        while self.eat_kw("OR") {
            parts.push(self.and()?);
        }
        self.depth -= 1;
        Ok(if parts.len() == 1 {
            parts.pop().unwrap_or(Cond::And(Vec::new()))
        } else {
            Cond::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Cond, SfError> {
        let mut parts = vec![self.not()?];
        while self.eat_kw("AND") {
            parts.push(self.not()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap_or(Cond::And(Vec::new()))
        } else {
            Cond::And(parts)
        })
    }

    fn not(&mut self) -> Result<Cond, SfError> {
        if self.eat_kw("NOT") {
            self.enter()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Cond::Not(Box::new(inner)));
        }
        if self.eat_sym("(") {
            let c = self.or()?;
            self.expect_sym(")")?;
            return Ok(c);
        }
        self.simple()
    }

    fn simple(&mut self) -> Result<Cond, SfError> {
        let path = self.path()?;
        let op_tok = self.peek().clone();
        let pos = op_tok.pos;
        let op = match &op_tok.t {
            T::Sym("=") => Some(CmpOp::Eq),
            T::Sym("!=" | "<>") => Some(CmpOp::Ne),
            T::Sym("<") => Some(CmpOp::Lt),
            T::Sym("<=") => Some(CmpOp::Le),
            T::Sym(">") => Some(CmpOp::Gt),
            T::Sym(">=") => Some(CmpOp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            self.i += 1;
            let value = self.literal()?;
            return Ok(Cond::Compare {
                path,
                op,
                value,
                pos,
            });
        }
        if self.eat_kw("LIKE") {
            let t = self.next();
            return match t.t {
                T::Str(_, raw) => Ok(Cond::Like {
                    path,
                    pattern: raw,
                    pos,
                }),
                _ => Err(malformed(
                    self.src,
                    t.pos,
                    &format!("LIKE needs a string pattern, found '{}'", t.text),
                )),
            };
        }
        let negated = self.eat_kw("NOT");
        if self.eat_kw("IN") {
            self.expect_sym("(")?;
            let mut values = vec![self.literal()?];
            while self.eat_sym(",") {
                values.push(self.literal()?);
            }
            self.expect_sym(")")?;
            return Ok(Cond::In {
                path,
                negated,
                values,
                pos,
            });
        }
        Err(self.unexpected())
    }

    fn literal(&mut self) -> Result<Literal, SfError> {
        let t = self.next();
        Ok(match t.t {
            T::Str(v, raw) => Literal::String(v, raw),
            T::Num(n) => Literal::Number(n),
            T::Date(d) => Literal::Date(d),
            T::DateTime(ms) => Literal::DateTime(ms),
            T::Sym("-") | T::Sym("+") => {
                let neg = t.t == T::Sym("-");
                let n = self.next();
                match n.t {
                    T::Num(v) => Literal::Number(if neg { -v } else { v }),
                    _ => {
                        return Err(malformed(
                            self.src,
                            n.pos,
                            &format!("unexpected token: '{}'", n.text),
                        ))
                    }
                }
            }
            T::Ident(s) => {
                let u = s.to_ascii_uppercase();
                match u.as_str() {
                    "NULL" => Literal::Null,
                    "TRUE" => Literal::Bool(true),
                    "FALSE" => Literal::Bool(false),
                    "TODAY" => Literal::Relative(RelDate::Today),
                    "YESTERDAY" => Literal::Relative(RelDate::Yesterday),
                    "TOMORROW" => Literal::Relative(RelDate::Tomorrow),
                    "LAST_N_DAYS" | "NEXT_N_DAYS" => {
                        self.expect_sym(":")?;
                        let n = self.count_value()?;
                        let n = u32::try_from(n).map_err(|_| {
                            malformed(self.src, t.pos, "relative date range too large")
                        })?;
                        if u == "LAST_N_DAYS" {
                            Literal::Relative(RelDate::LastNDays(n))
                        } else {
                            Literal::Relative(RelDate::NextNDays(n))
                        }
                    }
                    _ => {
                        return Err(malformed(
                            self.src,
                            t.pos,
                            &format!("unexpected token: '{}'", t.text),
                        ))
                    }
                }
            }
            T::Eof => {
                return Err(malformed(
                    self.src,
                    t.pos,
                    "unexpected end of query: expecting a value",
                ))
            }
            T::Sym(_) => {
                return Err(malformed(
                    self.src,
                    t.pos,
                    &format!("unexpected token: '{}'", t.text),
                ))
            }
        })
    }
}

/// Parses a SOQL query. Never panics; errors are `MALFORMED_QUERY` with the line and column.
pub fn parse(text: &str) -> Result<Query, SfError> {
    if text.len() > 100_000 {
        return Err(SfError::malformed_query(
            "Query is too long: the maximum length is 100,000 characters",
        ));
    }
    let toks = lex(text)?;
    let mut p = Parser {
        src: text,
        toks,
        i: 0,
        depth: 0,
    };
    p.query()
}

// ---------------------------------------------------------------------------------------------
// Compilation against the schema

/// A resolved field path: relationship hops, then a field of the final object.
#[derive(Debug, Clone)]
struct Acc {
    /// (reference field position on the current object, target object index).
    hops: Vec<(usize, usize)>,
    obj: usize,
    field: usize,
    name: String,
}

#[derive(Debug)]
enum Key {
    Text(String),
    Id(SfId),
    Num(f64),
    Bool(bool),
    Day(i32),
    Ms(i64),
}

#[derive(Debug)]
enum LikeTok {
    Any,
    One,
    Ch(char),
}

#[derive(Debug)]
enum Test {
    Null(bool),
    Cmp(CmpOp, Key),
    /// Half-open range [start, end) of a relative date literal, in the field's unit.
    Range(CmpOp, i64, i64),
    In(Vec<Key>, bool),
    Like(Vec<LikeTok>),
}

#[derive(Debug)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Test(Acc, Test),
}

struct Ctx<'a> {
    st: &'a State,
    src: &'a str,
    root: usize,
}

fn no_such_column(src: &str, pos: Pos, field: &str, object: &str) -> SfError {
    let mut e = error_at(
        src,
        pos,
        "INVALID_FIELD",
        &format!("No such column '{field}' on entity '{object}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names."),
    );
    e.fields = vec![field.to_string()];
    e
}

impl Ctx<'_> {
    fn obj(&self, i: usize) -> &CObject {
        &self.st.compiled.objects[i]
    }

    fn resolve(&self, path: &Path) -> Result<Acc, SfError> {
        let mut parts: &[String] = &path.parts;
        let root = self.obj(self.root);
        if parts.len() > 1
            && parts[0].eq_ignore_ascii_case(root.name())
            && !root.rels.contains_key(&parts[0].to_ascii_lowercase())
        {
            parts = &parts[1..];
        }
        if parts.len() > 6 {
            return Err(error_at(
                self.src,
                path.pos,
                "MALFORMED_QUERY",
                "relationship paths can traverse at most 5 levels",
            ));
        }
        let mut cur = self.root;
        let mut hops = Vec::new();
        let mut name = String::new();
        for rel in &parts[..parts.len().saturating_sub(1)] {
            let c = self.obj(cur);
            let Some(&(f, target)) = c.rels.get(&rel.to_ascii_lowercase()) else {
                let mut e = error_at(
                    self.src,
                    path.pos,
                    "INVALID_FIELD",
                    &format!("Didn't understand relationship '{rel}' in field path. If you are attempting to use a custom relationship, be sure to append the '__r' after the custom relationship name. Please reference your WSDL or the describe call for the appropriate names."),
                );
                e.fields = vec![path.text()];
                return Err(e);
            };
            name.push_str(c.fd(f).relationship_name.as_deref().unwrap_or(rel));
            name.push('.');
            hops.push((f, target));
            cur = target;
        }
        let leaf = parts.last().map(String::as_str).unwrap_or("");
        let c = self.obj(cur);
        let field = c
            .field(leaf)
            .ok_or_else(|| no_such_column(self.src, path.pos, leaf, c.name()))?;
        name.push_str(&c.fd(field).name);
        Ok(Acc {
            hops,
            obj: cur,
            field,
            name,
        })
    }

    fn key(&self, acc: &Acc, lit: &Literal, pos: Pos) -> Result<Key, SfError> {
        let fd = self.obj(acc.obj).fd(acc.field);
        let bad = |want: &str, quoted: bool| {
            error_at(
                self.src,
                pos,
                "INVALID_QUERY_FILTER_OPERATOR",
                &format!(
                    "value of filter criterion for field '{}' must be of type {want} and should {}be enclosed in quotes",
                    fd.name,
                    if quoted { "" } else { "not " }
                ),
            )
        };
        Ok(match fd.field_type {
            FieldType::Id | FieldType::Reference => match lit {
                Literal::String(s, _) => match SfId::parse(s) {
                    Ok(id) => Key::Id(id),
                    Err(_) if s.is_empty() => Key::Text(String::new()),
                    Err(_) => {
                        return Err(error_at(
                            self.src,
                            pos,
                            "INVALID_QUERY_FILTER_OPERATOR",
                            &format!("invalid ID field: {s}"),
                        ))
                    }
                },
                _ => return Err(bad("id", true)),
            },
            FieldType::String
            | FieldType::Textarea
            | FieldType::Picklist
            | FieldType::Multipicklist
            | FieldType::Email
            | FieldType::Phone
            | FieldType::Url => match lit {
                Literal::String(s, _) => Key::Text(s.to_lowercase()),
                _ => return Err(bad("string", true)),
            },
            FieldType::Int | FieldType::Double | FieldType::Currency | FieldType::Percent => {
                match lit {
                    Literal::Number(n) => Key::Num(*n),
                    _ => return Err(bad("double", false)),
                }
            }
            FieldType::Boolean => match lit {
                Literal::Bool(b) => Key::Bool(*b),
                _ => return Err(bad("boolean", false)),
            },
            FieldType::Date => match lit {
                Literal::Date(d) => Key::Day(*d),
                _ => return Err(bad("date", false)),
            },
            FieldType::Datetime => match lit {
                Literal::DateTime(ms) => Key::Ms(*ms),
                _ => return Err(bad("dateTime", false)),
            },
            FieldType::Address | FieldType::Location => {
                return Err(error_at(
                    self.src,
                    pos,
                    "INVALID_FIELD",
                    &format!("field '{}' can not be filtered in a query call", fd.name),
                ))
            }
        })
    }

    fn filterable(&self, acc: &Acc, pos: Pos) -> Result<(), SfError> {
        let c = self.obj(acc.obj);
        if c.is_compound(acc.field) {
            return Err(error_at(
                self.src,
                pos,
                "INVALID_FIELD",
                &format!(
                    "field '{}' can not be filtered in a query call",
                    c.fd(acc.field).name
                ),
            ));
        }
        Ok(())
    }

    fn compile(&self, cond: &Cond, today: i32, now_ms: i64) -> Result<Expr, SfError> {
        Ok(match cond {
            Cond::And(cs) => Expr::And(
                cs.iter()
                    .map(|c| self.compile(c, today, now_ms))
                    .collect::<Result<_, _>>()?,
            ),
            Cond::Or(cs) => Expr::Or(
                cs.iter()
                    .map(|c| self.compile(c, today, now_ms))
                    .collect::<Result<_, _>>()?,
            ),
            Cond::Not(c) => Expr::Not(Box::new(self.compile(c, today, now_ms)?)),
            Cond::Compare {
                path,
                op,
                value,
                pos,
            } => {
                let acc = self.resolve(path)?;
                self.filterable(&acc, path.pos)?;
                let test = match value {
                    Literal::Null => match op {
                        CmpOp::Eq => Test::Null(true),
                        CmpOp::Ne => Test::Null(false),
                        _ => {
                            return Err(error_at(
                                self.src,
                                *pos,
                                "MALFORMED_QUERY",
                                "null can only be compared with = or !=",
                            ))
                        }
                    },
                    Literal::Relative(r) => {
                        let (s, e) = match r {
                            RelDate::Today => (today, today + 1),
                            RelDate::Yesterday => (today - 1, today),
                            RelDate::Tomorrow => (today + 1, today + 2),
                            RelDate::LastNDays(n) => (today - *n as i32, today + 1),
                            RelDate::NextNDays(n) => (today + 1, today + 1 + *n as i32),
                        };
                        let fd = self.obj(acc.obj).fd(acc.field);
                        match fd.field_type {
                            FieldType::Date => Test::Range(*op, s as i64, e as i64),
                            FieldType::Datetime => {
                                let mut end = e as i64 * 86_400_000;
                                if matches!(r, RelDate::LastNDays(_)) {
                                    end = end.max(now_ms + 1);
                                }
                                Test::Range(*op, s as i64 * 86_400_000, end)
                            }
                            _ => {
                                return Err(error_at(
                                    self.src,
                                    *pos,
                                    "INVALID_QUERY_FILTER_OPERATOR",
                                    &format!(
                                        "date literals can only be used with date and dateTime fields, not '{}'",
                                        fd.name
                                    ),
                                ))
                            }
                        }
                    }
                    lit => Test::Cmp(*op, self.key(&acc, lit, *pos)?),
                };
                Expr::Test(acc, test)
            }
            Cond::In {
                path,
                negated,
                values,
                pos,
            } => {
                let acc = self.resolve(path)?;
                self.filterable(&acc, path.pos)?;
                let keys = values
                    .iter()
                    .map(|v| self.key(&acc, v, *pos))
                    .collect::<Result<_, _>>()?;
                Expr::Test(acc, Test::In(keys, *negated))
            }
            Cond::Like { path, pattern, pos } => {
                let acc = self.resolve(path)?;
                self.filterable(&acc, path.pos)?;
                let fd = self.obj(acc.obj).fd(acc.field);
                if matches!(
                    fd.field_type,
                    FieldType::Boolean
                        | FieldType::Int
                        | FieldType::Double
                        | FieldType::Currency
                        | FieldType::Percent
                        | FieldType::Date
                        | FieldType::Datetime
                ) {
                    return Err(error_at(
                        self.src,
                        *pos,
                        "INVALID_QUERY_FILTER_OPERATOR",
                        &format!("invalid operator on {} field: LIKE", fd.field_type.as_str()),
                    ));
                }
                let mut toks = Vec::new();
                let mut it = pattern.chars();
                while let Some(c) = it.next() {
                    match c {
                        '%' => toks.push(LikeTok::Any),
                        '_' => toks.push(LikeTok::One),
                        '\\' => {
                            let e = it.next().unwrap_or('\\');
                            let e = match e {
                                'n' => '\n',
                                't' => '\t',
                                other => other,
                            };
                            toks.extend(e.to_lowercase().map(LikeTok::Ch));
                        }
                        c => toks.extend(c.to_lowercase().map(LikeTok::Ch)),
                    }
                }
                Expr::Test(acc, Test::Like(toks))
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/// Follows the relationship hops from a root record; None when a parent is absent or deleted.
pub(crate) fn walk<'a>(
    st: &'a State,
    rec: &'a Record,
    hops: &[(usize, usize)],
) -> Option<&'a Record> {
    let mut cur = rec;
    for &(f, target) in hops {
        let Val::Id(id) = cur.val(f) else { return None };
        let (_, r) = st.stores[target].get(id)?;
        if r.deleted {
            return None;
        }
        cur = r;
    }
    Some(cur)
}

fn value_of<'a>(st: &'a State, rec: &'a Record, acc: &Acc) -> Cow<'a, Val> {
    match walk(st, rec, &acc.hops) {
        Some(r) => st.compiled.objects[acc.obj].get(r, acc.field),
        None => Cow::Owned(Val::Null),
    }
}

/// Case-insensitive comparison of `a` with an already lower-cased `b`.
fn ci_cmp(a: &str, b_lower: &str) -> Ordering {
    if a.is_ascii() && b_lower.is_ascii() {
        let (x, y) = (a.as_bytes(), b_lower.as_bytes());
        for (p, q) in x.iter().zip(y) {
            match p.to_ascii_lowercase().cmp(q) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        return x.len().cmp(&y.len());
    }
    a.chars().flat_map(char::to_lowercase).cmp(b_lower.chars())
}

/// Case-insensitive comparison of two stored strings.
fn ci_cmp2(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        let (x, y) = (a.as_bytes(), b.as_bytes());
        for (p, q) in x.iter().zip(y) {
            match p.to_ascii_lowercase().cmp(&q.to_ascii_lowercase()) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        return x.len().cmp(&y.len());
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .cmp(b.chars().flat_map(char::to_lowercase))
}

fn cmp_key(v: &Val, k: &Key) -> Option<Ordering> {
    match (v, k) {
        (Val::Null, _) => None,
        (Val::Id(id), Key::Id(k)) => Some(id.cmp(k)),
        (Val::Id(id), Key::Text(t)) => Some(ci_cmp(id.as_str(), t)),
        (Val::Str(s), Key::Text(t)) => Some(ci_cmp(s, t)),
        (Val::Str(s), Key::Id(k)) => Some(ci_cmp(s, &k.as_str().to_ascii_lowercase())),
        (v, Key::Num(n)) => v.as_f64()?.partial_cmp(n),
        (Val::Bool(b), Key::Bool(k)) => Some(b.cmp(k)),
        (Val::Date(d), Key::Day(k)) => Some(d.cmp(k)),
        (Val::DateTime(d), Key::Ms(k)) => Some(d.cmp(k)),
        _ => None,
    }
}

fn op_holds(op: CmpOp, o: Option<Ordering>) -> bool {
    match (op, o) {
        (CmpOp::Ne, None) => true,
        (_, None) => false,
        (CmpOp::Eq, Some(o)) => o == Ordering::Equal,
        (CmpOp::Ne, Some(o)) => o != Ordering::Equal,
        (CmpOp::Lt, Some(o)) => o == Ordering::Less,
        (CmpOp::Le, Some(o)) => o != Ordering::Greater,
        (CmpOp::Gt, Some(o)) => o == Ordering::Greater,
        (CmpOp::Ge, Some(o)) => o != Ordering::Less,
    }
}

fn like(pat: &[LikeTok], text: &str) -> bool {
    fn run<F: Fn(usize) -> char>(pat: &[LikeTok], n: usize, at: F) -> bool {
        // Iterative wildcard matching with single backtrack point (linear-ish).
        let (mut p, mut t) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while t < n {
            match pat.get(p) {
                Some(LikeTok::Any) => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                Some(LikeTok::One) => {
                    p += 1;
                    t += 1;
                    continue;
                }
                Some(LikeTok::Ch(c)) if *c == at(t) => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            }
        }
        pat[p.min(pat.len())..]
            .iter()
            .all(|x| matches!(x, LikeTok::Any))
    }
    if text.is_ascii() {
        let b = text.as_bytes();
        run(pat, b.len(), |i| b[i].to_ascii_lowercase() as char)
    } else {
        let cs: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
        run(pat, cs.len(), |i| cs[i])
    }
}

fn eval(st: &State, rec: &Record, e: &Expr) -> bool {
    match e {
        Expr::And(xs) => xs.iter().all(|x| eval(st, rec, x)),
        Expr::Or(xs) => xs.iter().any(|x| eval(st, rec, x)),
        Expr::Not(x) => !eval(st, rec, x),
        Expr::Test(acc, test) => {
            let v = value_of(st, rec, acc);
            match test {
                Test::Null(want_null) => v.is_null() == *want_null,
                Test::Cmp(op, k) => op_holds(*op, cmp_key(&v, k)),
                Test::Range(op, s, e) => {
                    let x = match &*v {
                        Val::Date(d) => *d as i64,
                        Val::DateTime(ms) => *ms,
                        _ => return *op == CmpOp::Ne,
                    };
                    match op {
                        CmpOp::Eq => x >= *s && x < *e,
                        CmpOp::Ne => !(x >= *s && x < *e),
                        CmpOp::Lt => x < *s,
                        CmpOp::Le => x < *e,
                        CmpOp::Gt => x >= *e,
                        CmpOp::Ge => x >= *s,
                    }
                }
                Test::In(keys, negated) => {
                    if v.is_null() {
                        return *negated;
                    }
                    let hit = keys.iter().any(|k| cmp_key(&v, k) == Some(Ordering::Equal));
                    hit != *negated
                }
                Test::Like(pat) => match v.as_text() {
                    Some(s) => like(pat, s),
                    None => false,
                },
            }
        }
    }
}

fn cmp_vals(a: &Val, b: &Val) -> Ordering {
    match (a, b) {
        (Val::Str(x), Val::Str(y)) => ci_cmp2(x, y),
        (Val::Id(x), Val::Id(y)) => x.cmp(y),
        (Val::Bool(x), Val::Bool(y)) => x.cmp(y),
        (Val::Date(x), Val::Date(y)) => x.cmp(y),
        (Val::DateTime(x), Val::DateTime(y)) => x.cmp(y),
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            _ => Ordering::Equal,
        },
    }
}

/// A query compiled against the schema: every name resolved, nothing scanned yet.
pub(crate) struct Plan {
    pub root: usize,
    filter: Option<Expr>,
    /// Select-list fields in order.
    cols: Vec<Acc>,
    count: Option<(Option<Acc>, Pos)>,
    /// (key, descending, nulls first).
    order: Vec<(Acc, bool, bool)>,
    offset: usize,
    limit: usize,
}

/// One select-list column of a [`Plan`], for renderers outside this module.
pub(crate) struct PlanColumn<'p> {
    pub hops: &'p [(usize, usize)],
    pub obj: usize,
    pub field: usize,
}

impl Plan {
    /// The queried object's API name.
    pub fn object_name(&self, st: &State) -> String {
        st.compiled.objects[self.root].name().to_string()
    }

    /// True for `SELECT COUNT() …` and `SELECT COUNT(field) …`.
    pub fn is_count(&self) -> bool {
        self.count.is_some()
    }

    /// True for `SELECT COUNT(field) …` (an AggregateResult row).
    pub fn is_count_field(&self) -> bool {
        matches!(self.count, Some((Some(_), _)))
    }

    /// Canonical select-list paths in order.
    pub fn column_names(&self) -> Vec<String> {
        self.cols.iter().map(|a| a.name.clone()).collect()
    }

    pub fn columns(&self) -> impl Iterator<Item = PlanColumn<'_>> {
        self.cols.iter().map(|a| PlanColumn {
            hops: &a.hops,
            obj: a.obj,
            field: a.field,
        })
    }
}

/// Resolves a parsed query against the schema (object, select list, filter, order keys).
pub(crate) fn plan(st: &State, q: &Query, src: &str) -> Result<Plan, SfError> {
    let root = st
        .compiled
        .object(&q.from)
        .ok_or_else(|| {
            error_at(
                src,
                q.from_pos,
                "INVALID_TYPE",
                &format!("sObject type '{}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names.", q.from),
            )
        })?
        .index;
    let ctx = Ctx { st, src, root };
    let now = crate::value::now_ms();
    let today = now.div_euclid(86_400_000) as i32;
    let filter = q
        .filter
        .as_ref()
        .map(|c| ctx.compile(c, today, now))
        .transpose()?;
    // Select list.
    let mut cols: Vec<Acc> = Vec::new();
    let mut count: Option<(Option<Acc>, Pos)> = None;
    for item in &q.select {
        match item {
            SelectItem::Field(p) => cols.push(ctx.resolve(p)?),
            SelectItem::Fields(kind, _) => {
                let c = ctx.obj(root);
                for (i, f) in c.def.fields.iter().enumerate() {
                    let keep = match kind.as_str() {
                        "CUSTOM" => f.custom,
                        "STANDARD" => !f.custom,
                        _ => true,
                    };
                    if keep {
                        cols.push(Acc {
                            hops: Vec::new(),
                            obj: root,
                            field: i,
                            name: f.name.clone(),
                        });
                    }
                }
            }
            SelectItem::Count(arg, pos) => {
                if count.is_some() {
                    return Err(malformed(src, *pos, "only one COUNT is supported"));
                }
                count = Some((arg.as_ref().map(|p| ctx.resolve(p)).transpose()?, *pos));
            }
        }
    }
    if let Some((_, pos)) = &count {
        if !cols.is_empty() {
            return Err(malformed(
                src,
                *pos,
                "Field must be grouped or aggregated: COUNT cannot be mixed with plain fields without GROUP BY",
            ));
        }
    }
    // Order keys.
    let mut order: Vec<(Acc, bool, bool)> = Vec::new();
    for ob in &q.order_by {
        let acc = ctx.resolve(&ob.path)?;
        if ctx.obj(acc.obj).is_compound(acc.field) {
            return Err(error_at(
                src,
                ob.path.pos,
                "INVALID_FIELD",
                &format!("field '{}' can not be sorted in a query call", acc.name),
            ));
        }
        let nulls_first = ob.nulls_first.unwrap_or(!ob.descending);
        order.push((acc, ob.descending, nulls_first));
    }
    Ok(Plan {
        root,
        filter,
        cols,
        count,
        order,
        offset: q.offset.unwrap_or(0) as usize,
        limit: q.limit.map(|l| l as usize).unwrap_or(usize::MAX),
    })
}

/// The records a non-COUNT plan returns, in result order (WHERE, ORDER BY, OFFSET and LIMIT
/// applied); with a COUNT plan, every matching record (neither OFFSET nor LIMIT applied).
pub(crate) fn select<'a>(st: &'a State, plan: &Plan, include_deleted: bool) -> Vec<&'a Record> {
    let root = plan.root;
    let order = &plan.order;
    let store = &st.stores[root];
    let (offset, limit) = (plan.offset, plan.limit);
    let id_order = order.len() == 1
        && !order[0].1
        && order[0].0.hops.is_empty()
        && order[0].0.field == st.compiled.objects[root].id_f;
    let stop_after = if order.is_empty() || id_order {
        offset.saturating_add(limit)
    } else {
        usize::MAX
    };
    let mut matched: Vec<&Record> = Vec::new();
    for rec in store.slots.iter().flatten() {
        if rec.deleted && !include_deleted {
            continue;
        }
        if let Some(f) = &plan.filter {
            if !eval(st, rec, f) {
                continue;
            }
        }
        matched.push(rec);
        if plan.count.is_none() && matched.len() >= stop_after {
            break;
        }
    }
    if plan.count.is_some() {
        return matched;
    }
    if !order.is_empty() && !id_order {
        let mut keyed: Vec<(Vec<Val>, &Record)> = matched
            .into_iter()
            .map(|r| {
                (
                    order
                        .iter()
                        .map(|(acc, _, _)| value_of(st, r, acc).into_owned())
                        .collect(),
                    r,
                )
            })
            .collect();
        keyed.sort_by(|(a, _), (b, _)| {
            for (k, (_, desc, nulls_first)) in order.iter().enumerate() {
                let (x, y) = (&a[k], &b[k]);
                let o = match (x.is_null(), y.is_null()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => {
                        if *nulls_first {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        }
                    }
                    (false, true) => {
                        if *nulls_first {
                            Ordering::Greater
                        } else {
                            Ordering::Less
                        }
                    }
                    (false, false) => {
                        let o = cmp_vals(x, y);
                        if *desc {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
        matched = keyed.into_iter().map(|(_, r)| r).collect();
    }
    if offset > 0 || matched.len() > limit {
        let end = offset.saturating_add(limit).min(matched.len());
        let start = offset.min(end);
        matched.drain(end..);
        matched.drain(..start);
    }
    matched
}

/// The COUNT value of a COUNT plan over the records [`select`] returned.
pub(crate) fn count_of(st: &State, plan: &Plan, matched: &[&Record]) -> usize {
    let n = match &plan.count {
        Some((Some(acc), _)) => matched
            .iter()
            .filter(|r| !value_of(st, r, acc).is_null())
            .count(),
        _ => matched.len(),
    };
    n.saturating_sub(plan.offset).min(plan.limit)
}

/// Runs a parsed query against the state.
pub(crate) fn execute(
    st: &State,
    q: &Query,
    src: &str,
    include_deleted: bool,
) -> Result<QueryResult, SfError> {
    let plan = plan(st, q, src)?;
    let matched = select(st, &plan, include_deleted);
    let obj_name = plan.object_name(st);
    if let Some((arg, _)) = &plan.count {
        let n = count_of(st, &plan, &matched);
        return Ok(match arg {
            None => QueryResult {
                object: obj_name,
                total_size: n,
                is_count: true,
                ..QueryResult::default()
            },
            Some(_) => QueryResult {
                object: "AggregateResult".into(),
                columns: vec!["expr0".into()],
                rows: vec![vec![Value::from(n as u64)]],
                total_size: 1,
                ..QueryResult::default()
            },
        });
    }
    let ctx = Ctx {
        st,
        src,
        root: plan.root,
    };
    // Relations (every prefix of every hop chain).
    let mut relations: Vec<(QueryRelation, Vec<(usize, usize)>)> = Vec::new();
    let accs: Vec<&Acc> = plan.cols.iter().collect();
    for acc in &accs {
        let parts: Vec<&str> = acc.name.split('.').collect();
        for k in 1..=acc.hops.len() {
            let path = parts[..k].join(".");
            if !relations.iter().any(|(r, _)| r.path == path) {
                relations.push((
                    QueryRelation {
                        path,
                        object: ctx.obj(acc.hops[k - 1].1).name().to_string(),
                    },
                    acc.hops[..k].to_vec(),
                ));
            }
        }
    }
    let mut result = QueryResult {
        object: obj_name,
        columns: accs.iter().map(|a| a.name.clone()).collect(),
        relations: relations.iter().map(|(r, _)| r.clone()).collect(),
        ..QueryResult::default()
    };
    for rec in matched {
        let mut row = Vec::with_capacity(accs.len());
        for acc in &accs {
            let c = &st.compiled.objects[acc.obj];
            let v = match walk(st, rec, &acc.hops) {
                Some(r) => match c.kinds[acc.field] {
                    FKind::Address(_) => c.field_json(r, acc.field),
                    _ => c.get(r, acc.field).to_json(),
                },
                None => Value::Null,
            };
            row.push(v);
        }
        if !relations.is_empty() {
            result.parent_ids.push(
                relations
                    .iter()
                    .map(|(_, hops)| walk(st, rec, hops).map(|r| r.id))
                    .collect(),
            );
        }
        result.rows.push(row);
        result.ids.push(rec.id);
    }
    result.total_size = result.rows.len();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(q: &str) -> SfError {
        parse(q).unwrap_err()
    }

    #[test]
    fn parses_the_subset() {
        let q = parse(
            "select Id, name, Account.Owner.Name, BillingAddress\n FROM Contact\nwhere (Name LIKE 'a%' or Email = null) AND NOT Id IN ('001000000000001') \
             AND CreatedDate >= 2024-01-15T10:30:00.000+0000 and Birthdate < 2000-01-01 AND Amount__c > -5.5 \
             ORDER BY Name DESC NULLS LAST, Id LIMIT 10 OFFSET 5",
        )
        .unwrap();
        assert_eq!(q.from, "Contact");
        assert_eq!(q.select.len(), 4);
        assert_eq!(q.limit, Some(10));
        assert_eq!(q.offset, Some(5));
        assert_eq!(q.order_by.len(), 2);
        assert!(q.order_by[0].descending);
        assert_eq!(q.order_by[0].nulls_first, Some(false));
        let q = parse("SELECT COUNT() FROM Account WHERE CreatedDate = LAST_N_DAYS:30").unwrap();
        assert!(matches!(q.select[0], SelectItem::Count(None, _)));
        let q = parse("SELECT Id FROM Account WHERE Name = 'O\\'Brien \\\\ x\\n'").unwrap();
        match q.filter {
            Some(Cond::Compare {
                value: Literal::String(v, _),
                ..
            }) => assert_eq!(v, "O'Brien \\ x\n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn datetime_literal_forms() {
        for lit in [
            "2024-01-15T10:30:00Z",
            "2024-01-15T10:30:00.000+0000",
            "2024-01-15T10:30:00+00:00",
            "2024-01-15T05:30:00-05:00",
        ] {
            let q = parse(&format!("SELECT Id FROM Account WHERE CreatedDate > {lit}")).unwrap();
            match q.filter {
                Some(Cond::Compare {
                    value: Literal::DateTime(ms),
                    ..
                }) => assert_eq!(ms, parse_datetime("2024-01-15T10:30:00Z").unwrap(), "{lit}"),
                other => panic!("{lit}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_queries_say_where() {
        let e = err("SELECT Id FORM Account");
        assert_eq!(e.error_code, "MALFORMED_QUERY");
        assert!(
            e.message.contains("unexpected token: 'FORM'"),
            "{}",
            e.message
        );
        assert!(e.message.contains("line 1 column 11"), "{}", e.message);
        assert!(
            e.message.contains("ERROR at Row:1:Column:11"),
            "{}",
            e.message
        );
        let e = err("SELECT Id\nFROM Account\nWHERE Name = ");
        assert!(e.message.contains("line 3"), "{}", e.message);
        assert!(err("SELECT FROM Account").message.contains("'FROM'"));
        assert!(err("SELECT Id FROM Account WHERE Name = 'abc")
            .message
            .contains("unterminated"));
        assert!(err("SELECT Id FROM Account LIMIT -1").error_code == "MALFORMED_QUERY");
        assert!(err("SELECT Id FROM Account WHERE CreatedDate > 2024-13-45")
            .message
            .contains("invalid date"));
        assert!(err("SELECT Id FROM Account WHERE Name ~ 'x'")
            .message
            .contains("'~'"));
        assert!(err("SELECT Id FROM Account extra")
            .message
            .contains("'extra'"));
        assert!(err("").message.contains("end of query"));
        assert!(err(&"(".repeat(1000)).error_code == "MALFORMED_QUERY");
        let deep = format!(
            "SELECT Id FROM Account WHERE {}Name = 'x'{}",
            "(".repeat(500),
            ")".repeat(500)
        );
        assert_eq!(err(&deep).error_code, "MALFORMED_QUERY");
    }

    #[test]
    fn like_matching() {
        let pat = |p: &str| {
            let mut v = Vec::new();
            for c in p.chars() {
                v.push(match c {
                    '%' => LikeTok::Any,
                    '_' => LikeTok::One,
                    c => LikeTok::Ch(c),
                });
            }
            v
        };
        assert!(like(&pat("acme%"), "ACME Corp"));
        assert!(like(&pat("%corp"), "Acme CORP"));
        assert!(like(&pat("%m_ c%"), "Acme Corp"));
        assert!(!like(&pat("acme"), "Acme Corp"));
        assert!(like(&pat("%"), ""));
        assert!(like(&pat("é%"), "Éclair"));
        assert!(!like(&pat("a_"), "a"));
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn parser_never_panics_on_soqlish(s in "(SELECT|FROM|WHERE|Id|Name|,|\\(|\\)|'|\\\\|=|!|<|>|LIKE|IN|NOT|AND|OR|2024-01-15|T10:30:00|Z|\\+|-|00:00|\\.|[0-9]|:| |\n|ORDER|BY|LIMIT|NULLS|COUNT|LAST_N_DAYS){0,40}") {
            let _ = parse(&s);
        }
    }
}
