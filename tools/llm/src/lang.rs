//! A crude script-based language guess, enough to choose question templates and check language
//! match: Han → `zh`, kana → `ja`, Hangul → `ko`, Cyrillic → `ru`, Arabic → `ar`, otherwise `en`.
//! Only letters count; the majority script wins (kana anywhere in Han text means `ja`).

pub fn detect(text: &str) -> &'static str {
    let (mut han, mut kana, mut hangul, mut cyr, mut arabic, mut latin) = (0usize, 0, 0, 0, 0, 0);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        match c as u32 {
            0x3040..=0x30FF => kana += 1,
            0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF => han += 1,
            0xAC00..=0xD7AF | 0x1100..=0x11FF => hangul += 1,
            0x0400..=0x04FF => cyr += 1,
            0x0600..=0x06FF => arabic += 1,
            _ => latin += 1,
        }
    }
    let cjk = han + kana;
    let best = [cjk, hangul, cyr, arabic, latin]
        .into_iter()
        .max()
        .unwrap_or(0);
    if best == 0 || best == latin {
        "en"
    } else if best == cjk {
        if kana > 0 { "ja" } else { "zh" }
    } else if best == hangul {
        "ko"
    } else if best == cyr {
        "ru"
    } else {
        "ar"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn guesses_scripts() {
        assert_eq!(super::detect("Hello world"), "en");
        assert_eq!(super::detect("机器学习 is 人工智能的分支"), "zh");
        assert_eq!(super::detect("これは日本語です"), "ja");
        assert_eq!(super::detect("Привет мир"), "ru");
        assert_eq!(super::detect("123"), "en");
    }
}
