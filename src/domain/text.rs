//! What a name may hold (users' and products' alike): trimmed, 1 to N characters, and no
//! control characters (Unicode Cc) and no format characters (Unicode Cf) — the invisible
//! and direction-changing ones (U+200B zero width space, U+202E right-to-left override,
//! U+2066–U+2069 the isolates, U+FEFF, the tag characters, …), with which a name can pass
//! for another or reorder the text shown around it. The OpenAPI document's patterns are
//! built from these same predicates (`http::schema_rules`).

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use super::FieldError;

pub const CONTROL_MESSAGE: &str = "must not contain control characters";
pub const FORMAT_MESSAGE: &str =
    "must not contain invisible or direction-changing characters (Unicode format characters)";

/// Unicode general category Cf.
pub fn is_format(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

/// A character no name may hold.
pub fn refused_in_names(c: char) -> bool {
    c.is_control() || is_format(c)
}

/// The name as kept: trimmed (of Unicode white space), 1 to `max_chars` characters
/// counted after trimming, with no control or format character anywhere.
pub fn normalize_name(field: &str, raw: &str, max_chars: usize) -> Result<String, FieldError> {
    if raw.chars().any(char::is_control) {
        return Err(FieldError::new(field, CONTROL_MESSAGE));
    }
    if raw.chars().any(is_format) {
        return Err(FieldError::new(field, FORMAT_MESSAGE));
    }
    let name = raw.trim();
    if (1..=max_chars).contains(&name.chars().count()) {
        Ok(name.to_owned())
    } else {
        Err(FieldError::new(field, format!("must be 1 to {max_chars} characters")))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn invisible_and_direction_changing_characters_are_refused() {
        for sneaky in
            ["\u{202E}gnp.exe", "Al\u{200B}ice", "\u{2066}x\u{2069}", "\u{2067}x", "\u{FEFF}Bob", "a\u{E0041}"]
        {
            assert_eq!(normalize_name("name", sneaky, 100), Err(FieldError::new("name", FORMAT_MESSAGE)), "{sneaky:?}");
        }
        assert_eq!(normalize_name("name", "a\u{7}", 100), Err(FieldError::new("name", CONTROL_MESSAGE)));
        for fine in ["Ada Lovelace", "Zoë", "Müller-Lüdenscheidt", "李小龍", "O'Brien", "👩🏽"] {
            assert_eq!(normalize_name("name", fine, 100).as_deref(), Ok(fine));
        }
    }

    #[test]
    fn names_are_trimmed_and_counted_in_characters() {
        assert_eq!(normalize_name("name", "  Ada \u{3000}", 3).as_deref(), Ok("Ada"));
        assert!(normalize_name("name", " \u{A0} ", 3).is_err());
        assert!(normalize_name("name", "Adam", 3).is_err());
        assert_eq!(normalize_name("name", "ééé", 3).as_deref(), Ok("ééé"));
    }

    proptest! {
        #[test]
        fn a_kept_name_holds_no_refused_character(raw in "\\PC{0,30}|.{0,30}") {
            if let Ok(name) = normalize_name("name", &raw, 100) {
                prop_assert!(!name.chars().any(refused_in_names));
            }
        }
    }
}
