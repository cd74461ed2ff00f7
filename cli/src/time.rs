//! Times on the command line: Unix milliseconds or an RFC 3339 / ISO 8601 date-time.

/// Milliseconds since the Unix epoch for `s`: digits are taken as milliseconds already;
/// otherwise `YYYY-MM-DD[THH:MM[:SS[.fff]]][Z|±HH:MM]` (UTC when no zone is given).
pub fn parse_datetime_ms(s: &str) -> Result<i64, String> {
    let bad = || {
        format!("bad date-time {s:?}: expected Unix milliseconds or YYYY-MM-DDTHH:MM:SS[.fff][Z|+HH:MM]")
    };
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| bad());
    }
    let num = |t: &str| -> Result<i64, String> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse().map_err(|_| bad())
    };
    let (date, rest) = match s.find(['T', ' ']) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    let d: Vec<&str> = date.split('-').collect();
    if d.len() != 3 {
        return Err(bad());
    }
    let (y, mo, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    // The zone: Z, or ±HH:MM / ±HHMM at the end.
    let (clock, offset_min) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let z = rest[i + 1..].replace(':', "");
        if z.len() != 4 {
            return Err(bad());
        }
        let m = num(&z[..2])? * 60 + num(&z[2..])?;
        (&rest[..i], if &rest[i..i + 1] == "-" { -m } else { m })
    } else {
        (rest, 0)
    };
    let (mut h, mut mi, mut sec, mut ms) = (0, 0, 0, 0);
    if !clock.is_empty() {
        let (hms, frac) = match clock.split_once('.') {
            Some((a, f)) => (a, Some(f)),
            None => (clock, None),
        };
        let t: Vec<&str> = hms.split(':').collect();
        if t.len() < 2 || t.len() > 3 {
            return Err(bad());
        }
        h = num(t[0])?;
        mi = num(t[1])?;
        if t.len() == 3 {
            sec = num(t[2])?;
        }
        if let Some(f) = frac {
            let f3: String = f.chars().chain("000".chars()).take(3).collect();
            num(f)?;
            ms = num(&f3)?;
        }
        if h > 23 || mi > 59 || sec > 60 {
            return Err(bad());
        }
    }
    let days = days_from_civil(y, mo, day);
    Ok((((days * 24 + h) * 60 + mi) * 60 + sec) * 1000 + ms - offset_min * 60_000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_datetime_ms;

    #[test]
    fn formats() {
        assert_eq!(parse_datetime_ms("0").unwrap(), 0);
        assert_eq!(
            parse_datetime_ms("1700000000123").unwrap(),
            1_700_000_000_123
        );
        assert_eq!(parse_datetime_ms("1970-01-01").unwrap(), 0);
        assert_eq!(
            parse_datetime_ms("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_datetime_ms("2023-11-14T22:13:20.123").unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_datetime_ms("2023-11-15T00:13:20+02:00").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_datetime_ms("2023-11-14T21:13:20.5-0100").unwrap(),
            1_700_000_000_500
        );
        assert_eq!(
            parse_datetime_ms("2000-02-29T00:00").unwrap(),
            951_782_400_000
        );
        for bad in [
            "",
            "yesterday",
            "2023-13-01",
            "2023-11-14T25:00",
            "2023-11-14T10:00+1",
            "12ab",
        ] {
            assert!(parse_datetime_ms(bad).is_err(), "{bad}");
        }
    }
}
