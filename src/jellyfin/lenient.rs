//! Decoding the server's JSON leniently and in bounded memory.
//!
//! Lenient: a field of the wrong type is "absent" instead of failing the whole answer, and
//! numbers written as strings are accepted (the server itself reads those).
//!
//! Bounded: nothing builds a generic tree (`serde_json::Value`) for a part of the answer the
//! daemon does not keep. Fields are read as [`Scalar`]s, unknown or ill-typed parts are skipped
//! with `IgnoredAny`, lists keep at most a fixed number of elements, and the one part that must
//! be kept verbatim (a user's policy, which the policy POST replaces whole) is built against a
//! node budget per answer. serde_json's recursion limit (128) bounds nesting on every path, so
//! memory stays proportional to the body whatever its shape (docs/design.md §10).

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Longest string kept from any field, in bytes (cut on a char boundary).
pub const MAX_STRING: usize = 4096;
/// Most elements kept from a list inside an object (streams, sources, commands).
pub const MAX_ITEMS: usize = 64;

/// A JSON value as a field reads it: a scalar, or `None` for null, arrays and objects
/// (skipped without being built).
#[derive(Debug)]
pub enum Scalar {
    Num(Number),
    Str(String),
    Bool(bool),
    None,
}

impl Scalar {
    pub fn to_i64(&self) -> Option<i64> {
        match self {
            // Beyond i64 the float cast saturates: such a value is clamped by its user anyway.
            Scalar::Num(n) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
            Scalar::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    pub fn into_string(self) -> Option<String> {
        match self {
            Scalar::Str(s) => Some(s),
            Scalar::Num(n) => Some(n.to_string()),
            Scalar::Bool(b) => Some(b.to_string()),
            Scalar::None => None,
        }
    }

    pub fn to_bool(&self) -> bool {
        match self {
            Scalar::Bool(b) => *b,
            Scalar::Str(s) => s.trim().eq_ignore_ascii_case("true"),
            Scalar::Num(n) => n.as_i64().is_some_and(|v| v != 0),
            Scalar::None => false,
        }
    }
}

fn owned(s: &str) -> String {
    crate::text::cut(s, MAX_STRING).to_owned()
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Num(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Num(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Number::from_f64(v).map_or(Scalar::None, Scalar::Num))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(owned(v)))
            }
            fn visit_string<E>(self, mut v: String) -> Result<Scalar, E> {
                let keep = crate::text::cut(&v, MAX_STRING).len();
                v.truncate(keep);
                Ok(Scalar::Str(v))
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::None)
            }
            fn visit_none<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
                Scalar::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::None)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::None)
            }
        }
        d.deserialize_any(V)
    }
}

pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Scalar::deserialize(d)?.to_i64())
}

/// A bitrate (bit/s). Jellyfin stores every bitrate as int32 (reference/jellyfin-api.md), so a
/// larger figure is clamped to `i32::MAX`; a negative one is absent.
pub fn opt_bitrate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Scalar::deserialize(d)?
        .to_i64()
        .and_then(|v| u64::try_from(v.min(i32::MAX as i64)).ok()))
}

pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Scalar::deserialize(d)?.into_string())
}

/// An id (session, user, item, device, media source): kept exactly as sent when it is
/// printable and at most `text::MAX_ID` characters, as every real one is (32 hex digits or a
/// GUID); anything else is escaped and cut like text, so logs stay clean and the server answers
/// a call with it 404.
pub fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(opt_string(d)?.map(|s| crate::text::clean(&s, crate::text::MAX_ID)))
}

pub fn id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(opt_id(d)?.unwrap_or_default())
}

/// Human text (names, titles): escaped and cut to `text::MAX_NAME` characters.
pub fn opt_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(opt_string(d)?.map(|s| crate::text::clean(&s, crate::text::MAX_NAME)))
}

pub fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(opt_name(d)?.unwrap_or_default())
}

pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Scalar::deserialize(d)?.to_bool())
}

/// `SupportedCommands`: only whether `DisplayMessage` is among them (all the daemon uses), so a
/// list of a million empty strings costs nothing. `None` when the field is not a list.
pub fn display_message<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<bool>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of commands")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<bool>, A::Error> {
            let mut found = false;
            while let Some(s) = seq.next_element::<Scalar>()? {
                if let Scalar::Str(c) = s {
                    found |= c.eq_ignore_ascii_case("DisplayMessage");
                }
            }
            Ok(Some(found))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<bool>, A::Error> {
            skip_map(map).map(|()| None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<bool>, D::Error> {
            d.deserialize_any(V)
        }
        fn visit_none<E>(self) -> Result<Option<bool>, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Option<bool>, E> {
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Option<bool>, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Option<bool>, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Option<bool>, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Option<bool>, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Option<bool>, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// An element that is an object decodes as `T`; anything else is `None`, skipped unbuilt.
pub struct Maybe<T>(pub Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Maybe<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Maybe<T>, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Maybe<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Maybe<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|t| Maybe(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Maybe<T>, A::Error> {
                skip_seq(seq).map(|()| Maybe(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Maybe<T>, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_none<E>(self) -> Result<Maybe<T>, E> {
                Ok(Maybe(None))
            }
            fn visit_unit<E>(self) -> Result<Maybe<T>, E> {
                Ok(Maybe(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Maybe<T>, E> {
                Ok(Maybe(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Maybe<T>, E> {
                Ok(Maybe(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Maybe<T>, E> {
                Ok(Maybe(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Maybe<T>, E> {
                Ok(Maybe(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Maybe<T>, E> {
                Ok(Maybe(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// An optional object field: anything but an object is absent.
pub fn opt_object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Maybe::<T>::deserialize(d)?.0)
}

/// What a list decoder keeps of each element.
pub trait Keep {
    fn keep(&self) -> bool {
        true
    }
}

/// A list inside an object: elements that are not objects are dropped, as are those `Keep`
/// refuses, and at most [`MAX_ITEMS`] are kept (the rest is skipped unbuilt). Anything but a
/// list is an empty list.
pub fn seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Keep,
{
    struct V<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de> + Keep> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while out.len() < MAX_ITEMS {
                match seq.next_element::<Maybe<T>>()? {
                    Some(Maybe(Some(t))) if t.keep() => out.push(t),
                    Some(_) => {}
                    None => return Ok(out),
                }
            }
            skip_seq(seq).map(|()| out)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
            skip_map(map).map(|()| Vec::new())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Vec<T>, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_none<E>(self) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
        fn visit_unit<E>(self) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
        fn visit_bool<E>(self, _: bool) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
        fn visit_i64<E>(self, _: i64) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
        fn visit_u64<E>(self, _: u64) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
        fn visit_f64<E>(self, _: f64) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
        fn visit_str<E>(self, _: &str) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(V(PhantomData))
}

/// A whole answer that must be a list (`/Sessions`, `/Users`): of at most `cap` elements, an
/// error beyond, because silently dropping a session or a user would look like a viewer who
/// left. Elements that are not objects are dropped.
pub fn top_list<T: for<'de> Deserialize<'de>>(
    body: &[u8],
    cap: usize,
) -> Result<Vec<T>, serde_json::Error> {
    struct V<T>(usize, PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a list of at most {} objects", self.0)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(Maybe(item)) = seq.next_element::<Maybe<T>>()? {
                if out.len() == self.0 {
                    return Err(de::Error::custom(format!(
                        "more than {} entries in a list",
                        self.0
                    )));
                }
                out.extend(item);
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let out = de.deserialize_seq(V(cap, PhantomData))?;
    de.end()?;
    Ok(out)
}

thread_local! {
    /// Nodes a kept tree may still have in the answer being decoded (see [`with_tree_budget`]).
    static TREE_BUDGET: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` (one decoding) with a budget of `nodes` for every tree kept verbatim in it. A
/// thread-local because derived `Deserialize` cannot pass state down; decoding is synchronous,
/// so the budget belongs to exactly one answer.
pub fn with_tree_budget<R>(nodes: usize, f: impl FnOnce() -> R) -> R {
    let old = TREE_BUDGET.with(|b| b.replace(nodes));
    let out = f();
    TREE_BUDGET.with(|b| b.set(old));
    out
}

fn spend<E: de::Error>() -> Result<(), E> {
    TREE_BUDGET.with(|b| match b.get().checked_sub(1) {
        Some(left) => {
            b.set(left);
            Ok(())
        }
        None => Err(E::custom(
            "the answer holds more values than any real server sends",
        )),
    })
}

/// A JSON value built against the answer's node budget.
struct Bounded(Value);

impl<'de> Deserialize<'de> for Bounded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bounded, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bounded;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Bounded, E> {
                spend()?;
                Ok(Bounded(Value::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bounded, E> {
                spend()?;
                Ok(Bounded(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bounded, E> {
                spend()?;
                Ok(Bounded(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Bounded, E> {
                spend()?;
                Ok(Bounded(
                    Number::from_f64(v).map_or(Value::Null, Value::Number),
                ))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bounded, E> {
                spend()?;
                Ok(Bounded(Value::String(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Bounded, E> {
                spend()?;
                Ok(Bounded(Value::String(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Bounded, E> {
                spend()?;
                Ok(Bounded(Value::Null))
            }
            fn visit_none<E: de::Error>(self) -> Result<Bounded, E> {
                self.visit_unit()
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Bounded, D::Error> {
                Bounded::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bounded, A::Error> {
                spend()?;
                let mut out = Vec::new();
                while let Some(Bounded(v)) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Bounded(Value::Array(out)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Bounded, A::Error> {
                spend()?;
                let mut out = Map::new();
                while let Some((k, Bounded(v))) = map.next_entry::<String, Bounded>()? {
                    out.insert(k, v);
                }
                Ok(Bounded(Value::Object(out)))
            }
        }
        d.deserialize_any(V)
    }
}

/// An object kept verbatim (a user's policy), against the answer's node budget; anything but
/// an object is an empty one.
pub fn object<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    Ok(match Bounded::deserialize(d)?.0 {
        Value::Object(m) => m,
        _ => Map::new(),
    })
}
