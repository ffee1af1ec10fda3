//! Lenient field deserializers for sources whose field types vary between versions.
//!
//! Falco prints `container.image.digest` as a string or an array depending on version, numbers
//! arrive as strings from some exporters, and any field may be `null`. These helpers take what
//! is there and never fail on a type mismatch of a field tidemark only reads for context.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Deserializes a string, number, boolean, or the first scalar of an array, as text. `null`,
/// objects and empty arrays give `None`.
pub(crate) fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    deserializer.deserialize_any(TextVisitor)
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number, boolean or array")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(TextVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut first = None;
        while let Some(item) = seq.next_element::<Lenient>()? {
            if first.is_none() {
                first = item.0;
            }
        }
        Ok(first)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// Like [`text`], but borrows the string from the record when it has no escapes, for fields that
/// are only inspected and never end up in a signal as they are.
pub(crate) fn cow<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'de, str>>, D::Error> {
    deserializer.deserialize_any(CowVisitor)
}

struct CowVisitor;

impl<'de> Visitor<'de> for CowVisitor {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        TextVisitor.expecting(f)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(TextVisitor.visit_i64(v)?.map(Cow::Owned))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(TextVisitor.visit_u64(v)?.map(Cow::Owned))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(TextVisitor.visit_f64(v)?.map(Cow::Owned))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(TextVisitor.visit_bool(v)?.map(Cow::Owned))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(CowVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Ok(TextVisitor.visit_seq(seq)?.map(Cow::Owned))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Ok(TextVisitor.visit_map(map)?.map(Cow::Owned))
    }
}

/// A value read with [`text`], usable as a sequence element.
struct Lenient(Option<String>);

impl<'de> serde::Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text(deserializer).map(Lenient)
    }
}

/// Deserializes an integer given as a number or a numeric string; anything else gives `None`.
pub(crate) fn integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    Ok(text(deserializer)?.and_then(|value| {
        value
            .parse::<i64>()
            .ok()
            .or_else(|| value.parse::<f64>().ok().map(|f| f as i64))
    }))
}

/// Deserializes a boolean given as a boolean or as `"true"`/`"false"`.
pub(crate) fn boolean<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<bool>, D::Error> {
    Ok(text(deserializer)?.and_then(|value| match value.as_str() {
        "true" | "True" | "TRUE" | "1" => Some(true),
        "false" | "False" | "FALSE" | "0" => Some(false),
        _ => None,
    }))
}

/// Deserializes a list of strings, a single string, or `null` as a list of strings.
pub(crate) fn strings<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct StringsVisitor;

    impl<'de> Visitor<'de> for StringsVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_owned()])
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut values = Vec::new();
            while let Some(item) = seq.next_element::<Lenient>()? {
                values.extend(item.0);
            }
            Ok(values)
        }
    }

    deserializer.deserialize_any(StringsVisitor)
}

/// Deserializes a list whose elements have a type of their own, taking `null` as the empty list.
///
/// Merge patches send `"initContainers": null` to clear a list, and Go encoders write a nil slice
/// as `null` (Tracee's `args`), so every list field that may be missing may also be `null`. Pair
/// it with `#[serde(default)]` for the missing case.
pub(crate) fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "super::text")]
        value: Option<String>,
        #[serde(default, deserialize_with = "super::integer")]
        number: Option<i64>,
        #[serde(default, deserialize_with = "super::strings")]
        list: Vec<String>,
        #[serde(default, deserialize_with = "super::list")]
        numbers: Vec<u32>,
    }

    #[test]
    fn text_takes_scalars_and_first_of_arrays() {
        let probe: Probe = serde_json::from_str(r#"{"value":["sha256:a","b"]}"#).unwrap();
        assert_eq!(probe.value.as_deref(), Some("sha256:a"));
        let probe: Probe = serde_json::from_str(r#"{"value":-1}"#).unwrap();
        assert_eq!(probe.value.as_deref(), Some("-1"));
        let probe: Probe = serde_json::from_str(r#"{"value":{"a":[1,2]}}"#).unwrap();
        assert_eq!(probe.value, None);
        let probe: Probe = serde_json::from_str(r#"{"value":null}"#).unwrap();
        assert_eq!(probe.value, None);
    }

    #[derive(Deserialize)]
    struct Borrowing<'a> {
        #[serde(borrow, default, deserialize_with = "super::cow")]
        value: Option<std::borrow::Cow<'a, str>>,
    }

    #[test]
    fn cow_borrows_plain_strings_and_owns_the_rest() {
        let probe: Borrowing<'_> = serde_json::from_str(r#"{"value":"plain"}"#).unwrap();
        assert!(matches!(
            probe.value,
            Some(std::borrow::Cow::Borrowed("plain"))
        ));
        let probe: Borrowing<'_> = serde_json::from_str(r#"{"value":"esc\u0041ped"}"#).unwrap();
        assert_eq!(probe.value.as_deref(), Some("escAped"));
        let probe: Borrowing<'_> = serde_json::from_str(r#"{"value":7}"#).unwrap();
        assert_eq!(probe.value.as_deref(), Some("7"));
    }

    #[test]
    fn integer_accepts_numeric_strings_only() {
        let probe: Probe = serde_json::from_str(r#"{"number":"16384"}"#).unwrap();
        assert_eq!(probe.number, Some(16384));
        let probe: Probe = serde_json::from_str(r#"{"number":"lots"}"#).unwrap();
        assert_eq!(probe.number, None);
    }

    #[test]
    fn strings_accepts_one_or_many() {
        let probe: Probe = serde_json::from_str(r#"{"list":"a"}"#).unwrap();
        assert_eq!(probe.list, ["a"]);
        let probe: Probe = serde_json::from_str(r#"{"list":["a",1,null]}"#).unwrap();
        assert_eq!(probe.list, ["a", "1"]);
    }

    #[test]
    fn list_takes_null_and_missing_as_empty() {
        let probe: Probe = serde_json::from_str(r#"{"numbers":null}"#).unwrap();
        assert!(probe.numbers.is_empty());
        let probe: Probe = serde_json::from_str("{}").unwrap();
        assert!(probe.numbers.is_empty());
        let probe: Probe = serde_json::from_str(r#"{"numbers":[1,2]}"#).unwrap();
        assert_eq!(probe.numbers, [1, 2]);
    }

    #[test]
    fn list_still_refuses_elements_of_the_wrong_type() {
        assert!(serde_json::from_str::<Probe>(r#"{"numbers":["one"]}"#).is_err());
        assert!(serde_json::from_str::<Probe>(r#"{"numbers":{}}"#).is_err());
    }
}
