//! The validators' rules, stated in the OpenAPI document wherever JSON Schema can state
//! them, so that every request the document calls valid is one the service accepts (a
//! client generated from it sends nothing the server refuses for its form). The text
//! patterns are built from the very predicates the validators apply (`extract`'s control
//! characters, `domain::text`'s names), the rest from the validators' constants; the tests
//! below hold each pattern against its validator.
//!
//! What a schema cannot state is left to the descriptions: a rule between two fields (an
//! order names each product once), and anything that depends on stored state (a product
//! that is archived, an email that is taken, a transfer to oneself).

use serde_json::{json, Value};

use crate::{
    domain::{
        catalog::{self, IF_MATCH_PATTERN},
        text,
        user::{self, EMAIL_PATTERN},
    },
    http::{
        extract::{is_forbidden_control, is_prose},
        idempotency,
    },
};

/// Request schemas whose `name` is a user's name, or a product's, and whose `email` is
/// checked as an address (a sign-in takes any text: an unknown one is just a wrong one).
const USER_NAMES: &[&str] = &["RegisterRequest", "UpdateUserRequest"];
const PRODUCT_NAMES: &[&str] = &["CreateProductRequest", "UpdateProductRequest"];

/// States every rule in `document` (the served OpenAPI document, as JSON).
pub fn apply(document: &mut Value) {
    let mut patterns = Patterns::default();
    if let Some(schemas) = document.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        for (schema_name, schema) in schemas.iter_mut().filter(|(name, _)| name.ends_with("Request")) {
            let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else { continue };
            for (field, property) in properties.iter_mut() {
                text_rule(&mut patterns, schema_name, field, property);
            }
        }
    }
    let Some(paths) = document["paths"].as_object_mut() else { return };
    // The WebSocket route's own rules belong to its handler.
    for (_, item) in paths.iter_mut().filter(|(path, _)| path.starts_with("/api/v1/") && *path != "/api/v1/ws") {
        let Some(item) = item.as_object_mut() else { continue };
        for operation in item.values_mut() {
            let Some(parameters) = operation.get_mut("parameters").and_then(Value::as_array_mut) else { continue };
            for parameter in parameters {
                parameter_rule(&mut patterns, parameter);
            }
        }
    }
}

/// Each pattern built once: a character class takes a pass over every Unicode scalar value.
#[derive(Default)]
struct Patterns {
    text: Option<String>,
    prose: Option<String>,
    names: Vec<(usize, String)>,
}

impl Patterns {
    /// Text with no control character (prose fields: but tab and line breaks).
    fn text(&mut self, field: Option<&str>) -> String {
        let slot = if field.is_some_and(is_prose) { &mut self.prose } else { &mut self.text };
        slot.get_or_insert_with(|| free_text_pattern(|c| is_forbidden_control(c, field))).clone()
    }

    fn name(&mut self, max_chars: usize) -> String {
        if let Some((_, pattern)) = self.names.iter().find(|(max, _)| *max == max_chars) {
            return pattern.clone();
        }
        let pattern = name_pattern(max_chars);
        self.names.push((max_chars, pattern.clone()));
        pattern
    }
}

fn parameter_rule(patterns: &mut Patterns, parameter: &mut Value) {
    let name = parameter["name"].as_str().unwrap_or_default().to_owned();
    match (parameter["in"].as_str(), name.as_str()) {
        (Some("header"), "Idempotency-Key") => {
            parameter["schema"] = json!({
                "type": "string",
                "minLength": 1,
                "maxLength": idempotency::MAX_KEY_CHARS,
                "pattern": idempotency::KEY_PATTERN,
                "examples": ["order-2026-12-01-0001"],
            });
        }
        (Some("header"), "If-Match") => {
            parameter["schema"] = json!({ "type": "string", "pattern": IF_MATCH_PATTERN, "examples": ["\"3\""] });
        }
        (Some("query"), _) if is_free_text(&parameter["schema"]) => {
            parameter["schema"]["pattern"] = Value::from(patterns.text(None));
        }
        _ => {}
    }
}

fn text_rule(patterns: &mut Patterns, schema_name: &str, field: &str, property: &mut Value) {
    if !is_free_text(property) {
        return;
    }
    // Not `format: email`: validators of that format apply IDNA's rules to the domain,
    // which the service does not (`a@ab--cd.example` is an address here), so the format
    // would call invalid what is accepted. The pattern says what is.
    if field == "email" && USER_NAMES.contains(&schema_name) {
        property["pattern"] = Value::from(EMAIL_PATTERN);
        return;
    }
    let name_max_chars = if USER_NAMES.contains(&schema_name) {
        Some(user::NAME_MAX_CHARS)
    } else if PRODUCT_NAMES.contains(&schema_name) {
        Some(catalog::NAME_MAX_CHARS)
    } else {
        None
    };
    match name_max_chars {
        Some(max_chars) if field == "name" => {
            // The length is counted after trimming, which the pattern states; the raw
            // string may be longer by the white space around it.
            if let Some(object) = property.as_object_mut() {
                object.remove("minLength");
                object.remove("maxLength");
            }
            property["pattern"] = Value::from(patterns.name(max_chars));
        }
        _ => property["pattern"] = Value::from(patterns.text(Some(field))),
    }
}

/// A string with no format and no enumeration: text a client types.
fn is_free_text(schema: &Value) -> bool {
    let is_string =
        schema["type"] == "string" || schema["type"].as_array().is_some_and(|t| t.contains(&json!("string")));
    is_string && schema.get("format").is_none() && schema.get("enum").is_none() && schema.get("pattern").is_none()
}

/// Any number of characters `refused` does not refuse.
pub fn free_text_pattern(refused: impl Fn(char) -> bool) -> String {
    format!("^{}*$", class_without(refused))
}

/// A name as `domain::text::normalize_name` keeps it: any white space around, then 1 to
/// `max_chars` characters that begin and end with something else, and no character
/// `text::refused_in_names` refuses anywhere.
pub fn name_pattern(max_chars: usize) -> String {
    let space = class_with(|c| c.is_whitespace() && !text::refused_in_names(c));
    let visible = class_without(|c| c.is_whitespace() || text::refused_in_names(c));
    let any = class_without(text::refused_in_names);
    let inner = max_chars.saturating_sub(2);
    format!("^{space}*{visible}(?:{any}{{0,{inner}}}{visible})?{space}*$")
}

/// `[^…]`: every character but those `refused` refuses.
fn class_without(refused: impl Fn(char) -> bool) -> String {
    format!("[^{}]", ranges(refused))
}

/// `[…]`: exactly the characters `kept` keeps.
fn class_with(kept: impl Fn(char) -> bool) -> String {
    format!("[{}]", ranges(kept))
}

/// The characters `wanted` picks, as character-class ranges: `\uXXXX` escapes in the Basic
/// Multilingual Plane (read alike by ECMA-262, Python and Rust regexes), the characters
/// themselves beyond it (one character each for ECMA-262 with the `u` flag, which JSON
/// Schema asks for). One pass over every Unicode scalar value.
fn ranges(wanted: impl Fn(char) -> bool) -> String {
    let mut ranges: Vec<(char, char)> = Vec::new();
    let mut previous_wanted = false;
    for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
        let is_wanted = wanted(c);
        match ranges.last_mut() {
            Some((_, end)) if is_wanted && previous_wanted => *end = c,
            _ if is_wanted => ranges.push((c, c)),
            _ => {}
        }
        previous_wanted = is_wanted;
    }
    ranges
        .iter()
        .map(|&(start, end)| if start == end { literal(start) } else { format!("{}-{}", literal(start), literal(end)) })
        .collect()
}

fn literal(c: char) -> String {
    match u32::from(c) {
        code @ 0..=0xFFFF => format!("\\u{code:04X}"),
        _ => c.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use regex::Regex;

    use super::*;
    use crate::domain::{catalog::IfMatch, text::normalize_name, user::normalize_email};

    fn full_match(pattern: &str) -> Regex {
        Regex::new(pattern).unwrap()
    }

    // Built once: each takes a pass over every Unicode scalar value.
    static NAME: LazyLock<Regex> = LazyLock::new(|| full_match(&name_pattern(5)));
    static TEXT: LazyLock<[(&str, Regex); 2]> = LazyLock::new(|| {
        ["password", "description"]
            .map(|field| (field, full_match(&free_text_pattern(|c| is_forbidden_control(c, Some(field))))))
    });

    /// Characters around every border the rules draw: white space, controls, format
    /// characters (BMP and astral), ordinary letters, an emoji.
    fn tricky() -> impl Strategy<Value = String> {
        let chars = prop::sample::select(vec![
            'a',
            'Z',
            'é',
            '李',
            ' ',
            '\u{A0}',
            '\u{3000}',
            '\u{2028}',
            '\t',
            '\n',
            '\r',
            '\u{0}',
            '\u{7F}',
            '\u{85}',
            '\u{9F}',
            '\u{AD}',
            '\u{200B}',
            '\u{200D}',
            '\u{202E}',
            '\u{2066}',
            '\u{FEFF}',
            '\u{E0041}',
            '\u{110BD}',
            '\u{034F}',
            '\u{115F}',
            '\u{180B}',
            '\u{2029}',
            '\u{3164}',
            '\u{E000}',
            '\u{FDD0}',
            '\u{FE0F}',
            '\u{FFA0}',
            '\u{FFFF}',
            '\u{E0100}',
            '\u{F0000}',
            '\u{10FFFF}',
            '😀',
            '.',
            '-',
        ]);
        prop::collection::vec(chars, 0..12).prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #[test]
        fn name_patterns_accept_exactly_the_names_the_validator_keeps(name in tricky()) {
            prop_assert_eq!(NAME.is_match(&name), normalize_name("name", &name, 5).is_ok(), "{:?}", name);
        }

        #[test]
        fn text_patterns_accept_exactly_what_the_control_rule_allows(text in tricky()) {
            for (field, pattern) in TEXT.iter() {
                prop_assert_eq!(pattern.is_match(&text), !crate::http::extract::has_forbidden_control(&text, Some(field)));
            }
        }

        #[test]
        fn every_email_the_pattern_matches_is_valid(
            email in proptest::string::string_regex(EMAIL_PATTERN.trim_start_matches('^').trim_end_matches('$')).unwrap(),
        ) {
            // The document adds `maxLength: 254`.
            if email.chars().count() <= 254 {
                prop_assert!(normalize_email(&email).is_ok(), "{}", email);
            }
        }

        #[test]
        fn the_if_match_pattern_is_the_parser(header in "[W/\"*, \\t3a!é]{0,12}") {
            prop_assert_eq!(full_match(IF_MATCH_PATTERN).is_match(&header), IfMatch::parse(&header).is_some(), "{:?}", header);
        }

        #[test]
        fn the_idempotency_key_pattern_is_the_check(key in "[ -~é]{0,300}") {
            prop_assert_eq!(full_match(idempotency::KEY_PATTERN).is_match(&key), idempotency::is_valid_key(&key));
        }
    }

    /// Every border of the validator's table of refused characters, and a character of each
    /// refused kind: the pattern and the validator agree on each, inside a name and around one.
    #[test]
    fn name_patterns_and_the_validator_agree_at_every_border() {
        let borders = (0..=u32::from(char::MAX))
            .filter_map(char::from_u32)
            .filter(|&c| {
                let before = char::from_u32(u32::from(c).wrapping_sub(1)).map(text::refused_in_names);
                let after = char::from_u32(u32::from(c) + 1).map(text::refused_in_names);
                let refused = Some(text::refused_in_names(c));
                before != refused || after != refused
            })
            .collect::<Vec<_>>();
        assert!(borders.len() > 50, "{} borders", borders.len());
        for c in borders.into_iter().chain(['\u{2028}', '\u{E0041}', '\u{FE0F}', '\u{3164}', '\u{10FFFD}']) {
            for name in [format!("a{c}b"), format!("{c}ab"), format!("ab{c}"), c.to_string()] {
                assert_eq!(
                    NAME.is_match(&name),
                    normalize_name("name", &name, 5).is_ok(),
                    "U+{:04X} in {name:?}",
                    u32::from(c)
                );
            }
        }
    }

    #[test]
    fn patterns_name_what_they_refuse() {
        let name = name_pattern(100);
        for refused in [
            "\\u200B-\\u200F",
            "\\u2028-\\u202E",
            "\\u2060-\\u206F",
            "\\uFE00-\\uFE0F",
            "\\uFEFF",
            "\\u0000-\\u001F",
            "\\uE000-\\uF8FF",
        ] {
            assert!(name.contains(refused), "{refused} in {name}");
        }
        assert!(full_match(&name).is_match(&format!(" {} ", "x".repeat(100))));
        assert!(!full_match(&name).is_match(&"x".repeat(101)));
        assert!(full_match(EMAIL_PATTERN).is_match("first.last@mail.example.co.uk"));
    }
}
