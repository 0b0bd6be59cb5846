//! What a name may hold (users' and products' alike): trimmed, 1 to N characters, and no
//! control characters (Unicode Cc) and nothing invisible or out of place in a name: format
//! characters (Cf: U+200B zero width space, U+202E right-to-left override, U+2066–U+2069
//! the isolates, U+FEFF, the tags, …), the rest of Unicode's default-ignorable code points
//! (variation selectors, Hangul fillers, the combining grapheme joiner, Mongolian free
//! variation selectors, …), line and paragraph separators (Zl, Zp), private-use characters
//! (Co) and noncharacters. With any of them a name can pass for another, reorder the text
//! shown around it, or show as something only one font knows. (Surrogates cannot occur: a
//! `char` is never one, and a JSON body with a lone surrogate escape does not parse.) The
//! OpenAPI document's patterns are built from these same predicates (`http::schema_rules`).

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use super::FieldError;

pub const CONTROL_MESSAGE: &str = "must not contain control characters";
pub const FORMAT_MESSAGE: &str =
    "must not contain invisible, direction-changing, line-separating or private-use characters";

/// Unicode's Default_Ignorable_Code_Point property, from DerivedCoreProperties.txt (Unicode
/// 16.0; unchanged since 14.0 added U+180F). `unicode-properties` does not carry it. Most
/// of it is Cf already; the ranges are kept whole so that they read against the file.
const DEFAULT_IGNORABLE: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),   // Cf  SOFT HYPHEN
    (0x034F, 0x034F),   // Mn  COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),   // Cf  ARABIC LETTER MARK
    (0x115F, 0x1160),   // Lo  HANGUL CHOSEONG FILLER..HANGUL JUNGSEONG FILLER
    (0x17B4, 0x17B5),   // Mn  KHMER VOWEL INHERENT AQ..KHMER VOWEL INHERENT AA
    (0x180B, 0x180D),   // Mn  MONGOLIAN FREE VARIATION SELECTOR ONE..THREE
    (0x180E, 0x180E),   // Cf  MONGOLIAN VOWEL SEPARATOR
    (0x180F, 0x180F),   // Mn  MONGOLIAN FREE VARIATION SELECTOR FOUR
    (0x200B, 0x200F),   // Cf  ZERO WIDTH SPACE..RIGHT-TO-LEFT MARK
    (0x202A, 0x202E),   // Cf  LEFT-TO-RIGHT EMBEDDING..RIGHT-TO-LEFT OVERRIDE
    (0x2060, 0x2064),   // Cf  WORD JOINER..INVISIBLE PLUS
    (0x2065, 0x2065),   // Cn  <reserved-2065>
    (0x2066, 0x206F),   // Cf  LEFT-TO-RIGHT ISOLATE..NOMINAL DIGIT SHAPES
    (0x3164, 0x3164),   // Lo  HANGUL FILLER
    (0xFE00, 0xFE0F),   // Mn  VARIATION SELECTOR-1..VARIATION SELECTOR-16
    (0xFEFF, 0xFEFF),   // Cf  ZERO WIDTH NO-BREAK SPACE
    (0xFFA0, 0xFFA0),   // Lo  HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),   // Cn  <reserved-FFF0>..<reserved-FFF8>
    (0x1BCA0, 0x1BCA3), // Cf  SHORTHAND FORMAT LETTER OVERLAP..SHORTHAND FORMAT UP STEP
    (0x1D173, 0x1D17A), // Cf  MUSICAL SYMBOL BEGIN BEAM..MUSICAL SYMBOL END PHRASE
    (0xE0000, 0xE0FFF), // Cn, Cf, Mn  tags, VARIATION SELECTOR-17..256, and reserved
];

/// Unicode general category Cf.
pub fn is_format(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

/// Unicode's Default_Ignorable_Code_Point: characters a renderer shows as nothing.
pub fn is_default_ignorable(c: char) -> bool {
    let code = u32::from(c);
    DEFAULT_IGNORABLE.iter().any(|&(first, last)| (first..=last).contains(&code))
}

/// U+FDD0–U+FDEF and the last two code points of every plane: never meant for interchange.
pub fn is_noncharacter(c: char) -> bool {
    let code = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&code) || code & 0xFFFE == 0xFFFE
}

/// Text no name may hold besides control characters: invisible, direction-changing,
/// line-separating, private-use or noncharacter.
pub fn is_invisible_or_unfit(c: char) -> bool {
    is_format(c)
        || is_default_ignorable(c)
        || matches!(
            c.general_category(),
            GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator | GeneralCategory::PrivateUse
        )
        || is_noncharacter(c)
}

/// A character no name may hold.
pub fn refused_in_names(c: char) -> bool {
    c.is_control() || is_invisible_or_unfit(c)
}

/// The name as kept: trimmed (of Unicode white space), 1 to `max_chars` characters
/// counted after trimming, with no character `refused_in_names` anywhere.
pub fn normalize_name(field: &str, raw: &str, max_chars: usize) -> Result<String, FieldError> {
    if raw.chars().any(char::is_control) {
        return Err(FieldError::new(field, CONTROL_MESSAGE));
    }
    if raw.chars().any(is_invisible_or_unfit) {
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
    fn ignorable_separating_private_use_and_noncharacters_are_refused() {
        let sneaky = [
            '\u{FE00}',
            '\u{FE0F}',
            '\u{E0100}',
            '\u{E01EF}',
            '\u{115F}',
            '\u{1160}',
            '\u{3164}',
            '\u{FFA0}',
            '\u{034F}',
            '\u{180B}',
            '\u{180E}',
            '\u{180F}',
            '\u{17B4}',
            '\u{E0000}',
            '\u{E0FFF}',
            '\u{2065}',
            '\u{2028}',
            '\u{2029}',
            '\u{E000}',
            '\u{F8FF}',
            '\u{F0000}',
            '\u{FFFFD}',
            '\u{100000}',
            '\u{10FFFD}',
            '\u{FDD0}',
            '\u{FDEF}',
            '\u{FFFE}',
            '\u{FFFF}',
            '\u{1FFFE}',
            '\u{10FFFF}',
        ];
        for c in sneaky {
            assert!(refused_in_names(c), "U+{:04X}", u32::from(c));
            let name = format!("Al{c}ice");
            assert_eq!(normalize_name("name", &name, 100), Err(FieldError::new("name", FORMAT_MESSAGE)), "{name:?}");
        }
        // Their neighbours are ordinary text.
        for c in ['\u{FDCF}', '\u{FDF0}', '\u{FFFD}', '\u{1161}', '\u{3165}', '\u{E1000}', '❤'] {
            assert!(!refused_in_names(c), "U+{:04X}", u32::from(c));
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
