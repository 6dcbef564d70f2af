//! The UCI file grammar, read exactly as OpenWrt's libuci reads it.
//!
//! libuci parses in place in a line buffer that it grows, NUL-terminates and re-reads, and
//! several of its odd behaviours (`;` handling, `#` anywhere unquoted, backslash-newline
//! continuations, a NUL byte swallowing the rest of its line, error byte offsets counted in the
//! buffer rather than the line) fall out of that buffer discipline. So this parser mirrors the
//! buffer discipline instead of a tidy tokenizer: it is the only way to be byte-compatible with
//! `uci show` and with uci's error positions on every input, including garbage.
//!
//! Input is bytes; names are ASCII by construction, values are converted to text lossily once
//! parsed.

use std::collections::HashMap;
use std::fmt;

/// libuci's initial line buffer size; it doubles as needed and never shrinks. The growth
/// pattern decides where `fgets` chunks end, which matters when a line holds a NUL byte.
const LINEBUF: usize = 32;

/// A parse error, as uci reports it: `Parse error (invalid command) at line 3, byte 1`.
///
/// `line` and `byte` are uci's own counters: `line` counts the newline-terminated lines read so
/// far, `byte` is the offset in the (possibly multi-line) command buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: u32,
    pub byte: usize,
    pub msg: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Parse error ({}) at line {}, byte {}",
            self.msg, self.line, self.byte
        )
    }
}

impl std::error::Error for ParseError {}

/// An option's value: a single string (`option`) or a list (`list`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Single(String),
    List(Vec<String>),
}

impl Value {
    /// The items: one for a single value, all of them for a list.
    pub fn items(&self) -> Vec<&str> {
        match self {
            Value::Single(s) => vec![s.as_str()],
            Value::List(l) => l.iter().map(String::as_str).collect(),
        }
    }
}

/// One option of a section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opt {
    pub name: String,
    pub value: Value,
    /// File line (1-based) of the assignment in force (for a list: of its last item).
    pub line: u32,
    /// File line of each item of the value, parallel to [`Value::items`].
    pub item_lines: Vec<u32>,
    /// The bytes of each item as the file holds them, parallel to [`Value::items`] (the text
    /// above is their lossy UTF-8 reading).
    pub raw: Vec<Vec<u8>>,
}

/// One `config` section; named sections opened again are merged into their first occurrence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub stype: String,
    /// `None` for an anonymous section (shown as `@type[N]`).
    pub name: Option<String>,
    /// File line (1-based) of the section's first `config` line.
    pub line: u32,
    pub options: Vec<Opt>,
}

impl Section {
    /// The option of that name, if set.
    pub fn get(&self, name: &str) -> Option<&Opt> {
        self.options.iter().find(|o| o.name == name)
    }
}

/// A parsed configuration file (one UCI package).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Package {
    pub sections: Vec<Section>,
}

/// Parses a UCI configuration file in uci's default strict mode: any error rejects the file.
pub fn parse(input: &[u8]) -> Result<Package, ParseError> {
    let mut p = Parser::new(input);
    p.run()?;
    Ok(p.finish())
}

impl Package {
    /// How `uci show` addresses each section, in order: its name, or `@type[N]` where `N`
    /// counts every earlier section of that type, named ones included.
    pub fn section_refs(&self) -> Vec<String> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        self.sections
            .iter()
            .map(|s| {
                let n = seen.entry(s.stype.as_str()).or_insert(0);
                let idx = *n;
                *n += 1;
                match &s.name {
                    Some(name) => name.clone(),
                    None => format!("@{}[{}]", s.stype, idx),
                }
            })
            .collect()
    }

    /// What `uci show <pkg>` prints for this package, read as UTF-8 (lossily: see
    /// [`Package::show_bytes`] for the exact bytes).
    pub fn show(&self, pkg: &str) -> String {
        String::from_utf8_lossy(&self.show_bytes(pkg)).into_owned()
    }

    /// Exactly the bytes `uci show <pkg>` prints for this package. uci's cli.c
    /// (`uci_print_value`) writes each value byte by byte, turning only `'` into `'\''`: bytes
    /// that are not UTF-8 come out as they are in the file.
    pub fn show_bytes(&self, pkg: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for (s, r) in self.sections.iter().zip(self.section_refs()) {
            out.extend_from_slice(format!("{pkg}.{r}={}\n", s.stype).as_bytes());
            for o in &s.options {
                out.extend_from_slice(format!("{pkg}.{r}.{}=", o.name).as_bytes());
                for (i, item) in o.raw.iter().enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    show_quote_bytes(item, &mut out);
                }
                out.push(b'\n');
            }
        }
        out
    }
}

fn show_quote_bytes(v: &[u8], out: &mut Vec<u8>) {
    out.push(b'\'');
    for &b in v {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
}

/// uci's show quoting: always single quotes, `'` written as `'\''`.
pub fn show_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

// ---- the parser: a transcription of libuci's file.c reading loop -------------------------

enum WValue {
    Single(Vec<u8>),
    List(Vec<Vec<u8>>),
}

struct WOpt {
    name: Vec<u8>,
    value: WValue,
    line: u32,
    item_lines: Vec<u32>,
}

struct WSection {
    stype: Vec<u8>,
    /// The real name, or the generated `cfgXXYYYY` one for an anonymous section (a later named
    /// section can, absurdly but faithfully, merge into it).
    name: Vec<u8>,
    anonymous: bool,
    line: u32,
    options: Vec<WOpt>,
}

struct Parser<'a> {
    input: &'a [u8],
    /// Read position in `input` (the stdio stream position).
    cur: usize,
    /// The stream's EOF flag (sticky, as in glibc >= 2.28 and musl).
    eof: bool,
    /// Newlines consumed from the input, for human line numbers.
    newlines: u32,
    /// The line buffer; its length is libuci's `bufsz`.
    buf: Vec<u8>,
    /// libuci's `bufsz`: the size it would have allocated. Only a number here: it decides
    /// where `fgets` chunks end, while `buf` grows only as far as bytes are written, since a
    /// NUL byte mid-line doubles `bufsz` once per line (2^lines bytes in libuci).
    bufsz: usize,
    buf_filled: usize,
    pos: usize,
    /// uci's line counter (newline-terminated reads only).
    line: u32,
    /// Physical line on which the current buffer line started.
    cmd_line: u32,
    sections: Vec<WSection>,
    /// Section and option lookups by name; uci searches lists, which turns a large file into
    /// quadratic work.
    section_index: HashMap<Vec<u8>, usize>,
    option_index: HashMap<(usize, Vec<u8>), usize>,
    n_section: u32,
    current: Option<usize>,
}

type PResult<T> = Result<T, ParseError>;

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `uci_validate_str`: names are `[A-Za-z0-9_]` (plus `-` for packages); types any printable
/// ASCII but space.
fn validate_str(s: &[u8], name: bool, package: bool) -> bool {
    if s.is_empty() {
        return false;
    }
    s.iter().all(|&c| {
        c.is_ascii_alphanumeric()
            || c == b'_'
            || (c == b'-' && package)
            || (!name && (33..=126).contains(&c))
    })
}

fn djbhash(s: &[u8]) -> u32 {
    let mut h: u32 = 5381;
    for &c in s {
        // C `char` arithmetic; types are printable ASCII, so signedness never shows.
        h = (h << 5).wrapping_add(h).wrapping_add(c as i8 as i32 as u32);
    }
    h & 0x7FFF_FFFF
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8]) -> Self {
        Parser {
            input,
            cur: 0,
            eof: false,
            newlines: 0,
            buf: vec![0; LINEBUF],
            bufsz: LINEBUF,
            buf_filled: 0,
            pos: 0,
            line: 0,
            cmd_line: 1,
            sections: Vec::new(),
            section_index: HashMap::new(),
            option_index: HashMap::new(),
            n_section: 0,
            current: None,
        }
    }

    fn err<T>(&self, msg: &'static str) -> PResult<T> {
        Err(ParseError {
            line: self.line,
            byte: self.pos,
            msg,
        })
    }

    fn ch(&self, i: usize) -> u8 {
        self.buf.get(i).copied().unwrap_or(0)
    }

    fn set(&mut self, i: usize, c: u8) {
        if i >= self.buf.len() {
            self.buf.resize(i + 1, 0);
        }
        self.buf[i] = c;
    }

    fn strlen(&self, i: usize) -> usize {
        self.buf
            .get(i..)
            .and_then(|b| b.iter().position(|&c| c == 0))
            .unwrap_or(0)
    }

    fn cstr(&self, i: usize) -> Vec<u8> {
        let n = self.strlen(i);
        self.buf.get(i..i + n).unwrap_or_default().to_vec()
    }

    fn grow(&mut self) {
        self.bufsz = self.bufsz.saturating_mul(2);
    }

    /// stdio `fgets(&buf[ofs], n, stream)`; false when it returns NULL.
    fn fgets(&mut self, ofs: usize, n: usize) -> bool {
        if n <= 1 {
            self.set(ofs, 0);
            return true;
        }
        if self.eof {
            return false;
        }
        let mut i = 0;
        while i < n - 1 {
            match self.input.get(self.cur) {
                None => {
                    self.eof = true;
                    break;
                }
                Some(&c) => {
                    self.set(ofs + i, c);
                    self.cur += 1;
                    i += 1;
                    if c == b'\n' {
                        self.newlines = self.newlines.saturating_add(1);
                        break;
                    }
                }
            }
        }
        if i == 0 {
            return false;
        }
        self.set(ofs + i, 0);
        true
    }

    /// `uci_getln`: reads the next line into the buffer at `offset`.
    fn getln(&mut self, offset: usize) {
        if offset + 1 >= self.bufsz {
            self.grow();
        }
        let mut ofs = offset;
        loop {
            self.set(ofs, 0);
            let n = self.bufsz - ofs;
            if !self.fgets(ofs, n) || self.ch(ofs) == 0 {
                return;
            }
            ofs += self.strlen(ofs);
            self.buf_filled = ofs;
            if self.ch(ofs.wrapping_sub(1)) == b'\n' {
                self.line = self.line.saturating_add(1);
                return;
            }
            self.grow();
        }
    }

    fn run(&mut self) -> PResult<()> {
        while !self.eof {
            self.pos = 0;
            self.cmd_line = self.newlines.saturating_add(1);
            self.getln(0);
            if self.ch(0) != 0 {
                self.parse_line()?;
            }
        }
        Ok(())
    }

    fn skip_whitespace(&mut self) {
        while self.ch(self.pos) != 0 && is_space(self.ch(self.pos)) {
            self.pos += 1;
        }
    }

    /// Returns true when the escaped character is to be taken literally; false when the
    /// backslash ended the line and the next line was appended in its place.
    fn parse_backslash(&mut self) -> bool {
        self.pos += 1;
        let c = self.ch(self.pos);
        if c == 0
            || c == b'\n'
            || (c == b'\r' && self.ch(self.pos + 1) == b'\n' && self.ch(self.pos + 2) == 0)
        {
            self.getln(self.pos);
            return false;
        }
        true
    }

    fn addc(&mut self, target: &mut usize) {
        let c = self.ch(self.pos);
        self.set(*target, c);
        *target += 1;
        self.pos += 1;
    }

    fn parse_double_quote(&mut self, target: &mut usize) -> PResult<()> {
        self.pos += 1;
        loop {
            match self.ch(self.pos) {
                b'"' => {
                    self.pos += 1;
                    return Ok(());
                }
                0 => {
                    self.getln(self.pos);
                    if self.ch(self.pos) == 0 {
                        return self.err("EOF with unterminated \"");
                    }
                }
                b'\\' => {
                    if self.parse_backslash() {
                        self.addc(target);
                    }
                }
                _ => self.addc(target),
            }
        }
    }

    fn parse_single_quote(&mut self, target: &mut usize) -> PResult<()> {
        self.pos += 1;
        loop {
            match self.ch(self.pos) {
                b'\'' => {
                    self.pos += 1;
                    return Ok(());
                }
                0 => {
                    self.getln(self.pos);
                    if self.ch(self.pos) == 0 {
                        return self.err("EOF with unterminated '");
                    }
                }
                _ => self.addc(target),
            }
        }
    }

    /// One argument: adjacent quoted and unquoted segments up to unquoted whitespace.
    fn parse_str(&mut self, target: &mut usize) -> PResult<()> {
        let mut next = true;
        loop {
            match self.ch(self.pos) {
                b'\'' => self.parse_single_quote(target)?,
                b'"' => self.parse_double_quote(target)?,
                b'#' => {
                    let p = self.pos;
                    self.set(p, 0);
                    break;
                }
                0 => break,
                b';' => {
                    next = false;
                    break;
                }
                b'\\' => {
                    if self.parse_backslash() {
                        self.addc(target);
                    }
                }
                _ => self.addc(target),
            }
            let c = self.ch(self.pos);
            if c == 0 || is_space(c) {
                break;
            }
        }
        if self.ch(self.pos) != 0 && next {
            self.pos += 1;
        }
        self.set(*target, 0);
        Ok(())
    }

    fn next_arg(&mut self, required: bool, name: bool, package: bool) -> PResult<usize> {
        self.skip_whitespace();
        let val = self.pos;
        let mut ptr = self.pos;
        if self.ch(self.pos) == b';' {
            let p = self.pos;
            self.set(p, 0);
            self.pos += 1;
        } else {
            self.parse_str(&mut ptr)?;
        }
        if self.ch(val) == 0 {
            if required {
                return self.err("insufficient arguments");
            }
            return Ok(val);
        }
        if name && !validate_str(&self.cstr(val), true, package) {
            return self.err("invalid character in name field");
        }
        Ok(val)
    }

    fn assert_eol(&mut self) -> PResult<()> {
        self.skip_whitespace();
        let t = self.next_arg(false, false, false)?;
        if self.ch(t) != 0 {
            return self.err("too many arguments");
        }
        Ok(())
    }

    fn increase_pos(&mut self, add: usize) -> bool {
        if self.pos + add > self.buf_filled {
            return false;
        }
        self.pos += add;
        true
    }

    /// C `strtok(s, " \t")` on a fresh string: the token's start, NUL-terminating it.
    fn strtok(&mut self, start: usize) -> Option<usize> {
        let mut i = start;
        while matches!(self.ch(i), b' ' | b'\t') {
            i += 1;
        }
        if self.ch(i) == 0 {
            return None;
        }
        let tok = i;
        while !matches!(self.ch(i), 0 | b' ' | b'\t') {
            i += 1;
        }
        if self.ch(i) != 0 {
            self.set(i, 0);
        }
        Some(tok)
    }

    fn parse_line(&mut self) -> PResult<()> {
        self.skip_whitespace();
        loop {
            let Some(tok) = self.strtok(self.pos) else {
                return Ok(());
            };
            let word = self.cstr(tok);
            let rest = word.get(1..).unwrap_or_default();
            let abbrev = |long: &[u8]| rest.is_empty() || rest == long;
            match word.first().copied().unwrap_or(0) {
                0 | b'#' => return Ok(()),
                b'p' if abbrev(b"ackage") => self.parse_package()?,
                b'c' if abbrev(b"onfig") => self.parse_config()?,
                b'o' if abbrev(b"ption") => self.parse_option(false)?,
                b'l' if abbrev(b"ist") => self.parse_option(true)?,
                _ => return self.err("invalid command"),
            }
        }
    }

    fn skip_keyword(&mut self, msg: &'static str) -> PResult<()> {
        let n = self.strlen(self.pos);
        if !self.increase_pos(n + 1) {
            return self.err(msg);
        }
        Ok(())
    }

    /// `package <name>` inside a config file is checked and otherwise ignored.
    fn parse_package(&mut self) -> PResult<()> {
        self.skip_keyword("package without name")?;
        self.next_arg(true, true, true)?;
        self.assert_eol()
    }

    fn parse_config(&mut self) -> PResult<()> {
        self.skip_keyword("config without name")?;
        let t = self.next_arg(true, false, false)?;
        let stype = self.cstr(t);
        if !validate_str(&stype, false, false) {
            return self.err("invalid character in type field");
        }
        let n = self.next_arg(false, true, false)?;
        let name = self.cstr(n);
        self.assert_eol()?;
        let line = self.cmd_line;
        if let Some(&i) = (!name.is_empty())
            .then(|| self.section_index.get(&name))
            .flatten()
        {
            if self.sections.get(i).is_some_and(|s| s.stype != stype) {
                return self
                    .err("section of different type overwrites prior section with same name");
            }
            self.current = Some(i);
            return Ok(());
        }
        self.n_section = self.n_section.wrapping_add(1);
        let anonymous = name.is_empty();
        let name = if anonymous {
            let hash = djbhash(&stype) % (1 << 16);
            format!("cfg{:02x}{hash:04x}", self.n_section).into_bytes()
        } else {
            name
        };
        let i = self.sections.len();
        self.section_index.entry(name.clone()).or_insert(i);
        self.sections.push(WSection {
            stype,
            name,
            anonymous,
            line,
            options: Vec::new(),
        });
        self.current = Some(i);
        Ok(())
    }

    fn parse_option(&mut self, list: bool) -> PResult<()> {
        let Some(si) = self.current else {
            return self.err("option/list command found before the first section");
        };
        self.skip_keyword("option without name")?;
        let n = self.next_arg(true, true, false)?;
        let name = self.cstr(n);
        let v = self.next_arg(false, false, false)?;
        let value = self.cstr(v);
        self.assert_eol()?;
        let line = self.cmd_line;
        let Some(sec) = self.sections.get_mut(si) else {
            return Ok(());
        };
        let new_index = sec.options.len();
        let existing = match self.option_index.get(&(si, name.clone())) {
            Some(&oi) => sec.options.get_mut(oi),
            None => None,
        };
        if list {
            match existing {
                None => {
                    self.option_index.insert((si, name.clone()), new_index);
                    sec.options.push(WOpt {
                        name,
                        value: WValue::List(vec![value]),
                        line,
                        item_lines: vec![line],
                    });
                }
                Some(o) => {
                    match &mut o.value {
                        WValue::List(items) => items.push(value),
                        WValue::Single(old) => {
                            let old = std::mem::take(old);
                            o.value = WValue::List(vec![old, value]);
                        }
                    }
                    o.line = line;
                    o.item_lines.push(line);
                }
            }
        } else if value.is_empty() {
            // uci_set with an empty value never creates and never clears.
        } else {
            match existing {
                None => {
                    self.option_index.insert((si, name.clone()), new_index);
                    sec.options.push(WOpt {
                        name,
                        value: WValue::Single(value),
                        line,
                        item_lines: vec![line],
                    });
                }
                Some(o) => {
                    if !matches!(&o.value, WValue::Single(s) if *s == value) {
                        o.value = WValue::Single(value);
                        o.line = line;
                        o.item_lines = vec![line];
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Package {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Package {
            sections: self
                .sections
                .into_iter()
                .map(|s| Section {
                    stype: text(&s.stype),
                    name: (!s.anonymous).then(|| text(&s.name)),
                    line: s.line,
                    options: s
                        .options
                        .into_iter()
                        .map(|o| {
                            let (value, raw) = match o.value {
                                WValue::Single(v) => (Value::Single(text(&v)), vec![v]),
                                WValue::List(l) => {
                                    (Value::List(l.iter().map(|i| text(i)).collect()), l)
                                }
                            };
                            Opt {
                                name: text(&o.name),
                                value,
                                line: o.line,
                                item_lines: o.item_lines,
                                raw,
                            }
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(src: &str) -> String {
        parse(src.as_bytes()).expect("parses").show("p")
    }

    #[test]
    fn show_keeps_bytes_that_are_not_utf8() {
        let p =
            parse(b"config t 's'\n\toption a '\xff\xfe'\n\tlist l 'x\xe9'\n\tlist l \"it's\"\n")
                .unwrap();
        assert_eq!(
            p.show_bytes("p"),
            b"p.s=t\np.s.a='\xff\xfe'\np.s.l='x\xe9' 'it'\\''s'\n".to_vec()
        );
        assert_eq!(
            p.show("p"),
            "p.s=t\np.s.a='\u{fffd}\u{fffd}'\np.s.l='x\u{fffd}' 'it'\\''s'\n"
        );
    }

    /// libuci doubles its line buffer once per `fgets` chunk that does not end a line, and a
    /// NUL byte mid-line makes every line such a chunk (`strlen` stops at the NUL): on a file of
    /// a few hundred such lines uci would ask for 2^hundreds bytes. The size only decides where
    /// `fgets` chunks end, so it is kept as a number and memory follows what is written.
    #[test]
    fn nul_bytes_on_many_lines_keep_memory_bounded() {
        let mut src = b"config t 'n'\n\toption a \"".to_vec();
        for _ in 0..300 {
            src.extend_from_slice(b"x\0y\n");
        }
        src.extend_from_slice(b"\"\n");
        let p = parse(&src).unwrap();
        assert_eq!(p.show("p"), format!("p.n=t\np.n.a='{}'\n", "x".repeat(300)));
        let mut p = Parser::new(&src);
        let _ = p.run();
        assert!(p.buf.len() <= 2 * src.len() + LINEBUF, "{}", p.buf.len());
    }

    fn perr(src: &[u8]) -> String {
        parse(src).expect_err("must fail").to_string()
    }

    #[test]
    fn basic_show() {
        assert_eq!(
            show("config jellydemon 'main'\n\toption enabled '1'\nconfig client\n\toption mac 'aa'\n\tlist ip '1'\n\tlist ip 'b c'\n"),
            "p.main=jellydemon\np.main.enabled='1'\np.@client[0]=client\np.@client[0].mac='aa'\np.@client[0].ip='1' 'b c'\n"
        );
    }

    #[test]
    fn abbreviations_and_bare_words() {
        assert_eq!(
            show("c t n\no a b\nl c d\np x\n"),
            "p.n=t\np.n.a='b'\np.n.c='d'\n"
        );
        assert_eq!(
            perr(b"Config t\n"),
            "Parse error (invalid command) at line 1, byte 0"
        );
        assert_eq!(
            perr(b"optionx a b\n"),
            "Parse error (invalid command) at line 1, byte 0"
        );
        assert_eq!(
            perr(b"conf t\n"),
            "Parse error (invalid command) at line 1, byte 0"
        );
    }

    #[test]
    fn quoting_and_concatenation() {
        assert_eq!(
            show("config t n\noption a abc'def'\"ghi\"\n"),
            "p.n=t\np.n.a='abcdefghi'\n"
        );
        assert_eq!(
            show("config t n\noption a 'it'\\''s'\n"),
            "p.n=t\np.n.a='it'\\''s'\n"
        );
        assert_eq!(
            show("config t n\noption a \"x\\\"y\\n\"\n"),
            "p.n=t\np.n.a='x\"yn'\n"
        );
        assert_eq!(
            show("config t n\noption a 'x\\ny'\n"),
            "p.n=t\np.n.a='x\\ny'\n"
        );
        assert_eq!(show("config t n\noption a a\\ b\n"), "p.n=t\np.n.a='a b'\n");
    }

    #[test]
    fn multiline_quotes_keep_newlines() {
        assert_eq!(
            show("config t n\noption a 'x\ny'\n"),
            "p.n=t\np.n.a='x\ny'\n"
        );
        assert_eq!(
            show("config t n\noption a \"x\ny\"\n"),
            "p.n=t\np.n.a='x\ny'\n"
        );
        assert_eq!(
            show("config t n\noption a \"x\\\ny\"\n"),
            "p.n=t\np.n.a='xy'\n"
        );
    }

    #[test]
    fn comments_anywhere_unquoted() {
        assert_eq!(
            show("# c\nconfig t n # c\n option a abc#def\n option b 'x#y'\n  # x\n"),
            "p.n=t\np.n.a='abc'\np.n.b='x#y'\n"
        );
        assert_eq!(show("config t#x\n"), "p.@t[0]=t\n");
    }

    #[test]
    fn semicolons_are_context_sensitive() {
        assert_eq!(
            show("config t n\noption a x;option b y\n"),
            "p.n=t\np.n.a='x'\n"
        );
        assert_eq!(
            show("config t n\noption a 'x'; option b y\n"),
            "p.n=t\np.n.a='x'\np.n.b='y'\n"
        );
        assert_eq!(show("config t 'n'; option b y\n"), "p.n=t\np.n.b='y'\n");
        assert_eq!(
            perr(b"config t n\noption a '1';\n"),
            "Parse error (invalid command) at line 2, byte 13"
        );
    }

    #[test]
    fn crlf() {
        assert_eq!(
            show("config t n\r\noption a b\r\noption c 'd\r\ne'\r\n"),
            "p.n=t\np.n.a='b'\np.n.c='d\r\ne'\n"
        );
    }

    #[test]
    fn named_merge_and_positions() {
        assert_eq!(
            show("config t n\noption a 1\noption b 2\nconfig u m\nconfig t n\noption a 3\n"),
            "p.n=t\np.n.a='3'\np.n.b='2'\np.m=u\n"
        );
        assert_eq!(
            perr(b"config t n\nconfig u n\n"),
            "Parse error (section of different type overwrites prior section with same name) at line 2, byte 11"
        );
    }

    #[test]
    fn option_list_conversion() {
        assert_eq!(
            show("config t n\noption a 1\nlist a 2\n"),
            "p.n=t\np.n.a='1' '2'\n"
        );
        assert_eq!(
            show("config t n\nlist a 1\nlist a 2\noption a 3\noption z 4\n"),
            "p.n=t\np.n.a='3'\np.n.z='4'\n"
        );
        assert_eq!(
            show("config t n\nlist a\nlist a ''\n"),
            "p.n=t\np.n.a='' ''\n"
        );
    }

    #[test]
    fn empty_option_is_absent_only_when_new() {
        assert_eq!(show("config t n\noption a ''\noption b\n"), "p.n=t\n");
        assert_eq!(
            show("config t n\noption a 'v'\noption a ''\noption a\n"),
            "p.n=t\np.n.a='v'\n"
        );
    }

    #[test]
    fn anonymous_indexes_count_named_sections() {
        assert_eq!(
            show("config user 'admin'\nconfig user\noption name x\nconfig other\nconfig user ''\n"),
            "p.admin=user\np.@user[1]=user\np.@user[1].name='x'\np.@other[0]=other\np.@user[2]=user\n"
        );
    }

    #[test]
    fn names_validated() {
        assert_eq!(
            perr(b"config t a-b\n"),
            "Parse error (invalid character in name field) at line 1, byte 13"
        );
        assert_eq!(
            perr(b"config t n\noption a.b c\n"),
            "Parse error (invalid character in name field) at line 2, byte 11"
        );
        assert_eq!(
            perr(b"config 't y'\n"),
            "Parse error (invalid character in type field) at line 1, byte 13"
        );
        assert_eq!(
            perr(b"config\n"),
            "Parse error (invalid command) at line 1, byte 0"
        );
        assert_eq!(
            perr(b"config"),
            "Parse error (config without name) at line 0, byte 0"
        );
    }

    #[test]
    fn strict_errors() {
        assert_eq!(
            perr(b"option a b\n"),
            "Parse error (option/list command found before the first section) at line 1, byte 0"
        );
        assert_eq!(
            perr(b"config t n\noption a b c\n"),
            "Parse error (too many arguments) at line 2, byte 13"
        );
        assert_eq!(
            perr(b"config t n\noption a 'b\n"),
            "Parse error (EOF with unterminated ') at line 2, byte 12"
        );
        assert_eq!(
            perr(b"config t n\noption a \"b"),
            "Parse error (EOF with unterminated \") at line 1, byte 11"
        );
    }

    #[test]
    fn bom_and_nbsp_are_errors() {
        assert!(parse(b"\xef\xbb\xbfconfig t n\n").is_err());
        assert!(parse(b"\xc2\xa0config t n\n").is_err());
    }

    #[test]
    fn non_utf8_values_survive_lossily() {
        let p = parse(b"config t n\noption a '\xff\xfe'\n").expect("parses");
        assert_eq!(
            p.sections[0].options[0].value,
            Value::Single("\u{fffd}\u{fffd}".into())
        );
    }

    #[test]
    fn lines_recorded() {
        let p = parse(b"\n# x\nconfig t n\n\n  option a 1\nlist b x\nlist b y\n").expect("parses");
        let s = &p.sections[0];
        assert_eq!(s.line, 3);
        assert_eq!(s.get("a").map(|o| o.line), Some(5));
        assert_eq!(s.get("b").map(|o| o.item_lines.clone()), Some(vec![6, 7]));
    }
}
