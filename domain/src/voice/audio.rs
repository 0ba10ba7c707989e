//! Audio files as the voice area takes them: the format sniffed from the
//! bytes (never from a name or a media type the client sent) and the
//! duration read from the container's own header, before any paid call.
//! Only headers are read, with every offset bounds-checked: a corrupt or
//! hostile file is an error, never a panic or a large allocation.

/// The containers the transcription API takes that can be recognised from
/// their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    Wav,
    Mp3,
    Ogg,
    Webm,
    M4a,
    Flac,
}

impl AudioFormat {
    pub fn name(self) -> &'static str {
        match self {
            AudioFormat::Wav => "wav",
            AudioFormat::Mp3 => "mp3",
            AudioFormat::Ogg => "ogg",
            AudioFormat::Webm => "webm",
            AudioFormat::M4a => "m4a",
            AudioFormat::Flac => "flac",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            AudioFormat::Wav => "audio/wav",
            AudioFormat::Mp3 => "audio/mpeg",
            AudioFormat::Ogg => "audio/ogg",
            AudioFormat::Webm => "audio/webm",
            AudioFormat::M4a => "audio/mp4",
            AudioFormat::Flac => "audio/flac",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AudioError {
    #[error("the audio file is empty")]
    Empty,
    #[error("the file is not audio in a supported format (wav, mp3, ogg, webm, m4a, flac)")]
    Unsupported,
    #[error("the {0} file is corrupt: {1}")]
    Corrupt(&'static str, &'static str),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AudioInfo {
    pub format: AudioFormat,
    /// Seconds, when the container says; `None` (e.g. a WebM recorded live,
    /// which carries no duration): unknown.
    pub duration_secs: Option<f64>,
}

/// The format, from the first bytes.
pub fn sniff(bytes: &[u8]) -> Result<AudioFormat, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE" {
        return Ok(AudioFormat::Wav);
    }
    if bytes.starts_with(b"fLaC") {
        return Ok(AudioFormat::Flac);
    }
    if bytes.starts_with(b"OggS") {
        return Ok(AudioFormat::Ogg);
    }
    if bytes.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]) {
        return Ok(AudioFormat::Webm);
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return Ok(AudioFormat::M4a);
    }
    if bytes.starts_with(b"ID3") || mp3_frame(bytes, 0).is_some() {
        return Ok(AudioFormat::Mp3);
    }
    Err(AudioError::Unsupported)
}

/// The format and, where the container records it, the duration.
pub fn inspect(bytes: &[u8]) -> Result<AudioInfo, AudioError> {
    let format = sniff(bytes)?;
    let duration_secs = match format {
        AudioFormat::Wav => wav_duration(bytes)?,
        AudioFormat::Mp3 => mp3_duration(bytes)?,
        AudioFormat::Ogg => ogg_duration(bytes)?,
        AudioFormat::Webm => webm_duration(bytes)?,
        AudioFormat::M4a => m4a_duration(bytes)?,
        AudioFormat::Flac => flac_duration(bytes)?,
    };
    Ok(AudioInfo {
        format,
        duration_secs: duration_secs.filter(|d| d.is_finite() && *d >= 0.0),
    })
}

fn u16_le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u32_be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_be(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
fn u64_le(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// RIFF chunks: `fmt ` gives the byte rate, `data` the sample bytes (a size
/// larger than the file, as a streaming writer leaves it, counts what is
/// there).
fn wav_duration(b: &[u8]) -> Result<Option<f64>, AudioError> {
    let corrupt = |why| AudioError::Corrupt("wav", why);
    let (mut at, mut byte_rate, mut data) = (12usize, None, None);
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let size = u32_le(b, at + 4).ok_or(corrupt("truncated chunk header"))? as usize;
        let body = at + 8;
        match id {
            b"fmt " => {
                byte_rate = Some(u32_le(b, body + 8).ok_or(corrupt("truncated fmt chunk"))?);
            }
            b"data" => {
                data = Some(size.min(b.len() - body));
                break;
            }
            _ => {}
        }
        // Chunks are padded to an even size.
        at = body.saturating_add(size).saturating_add(size & 1);
    }
    let byte_rate = byte_rate.ok_or(corrupt("no fmt chunk"))?;
    let data = data.ok_or(corrupt("no data chunk"))?;
    if byte_rate == 0 {
        return Err(corrupt("a byte rate of zero"));
    }
    Ok(Some(data as f64 / f64::from(byte_rate)))
}

/// An MPEG audio frame header at `at`: (bitrate bits/s, sample rate,
/// samples per frame, MPEG-1, mono).
fn mp3_frame(b: &[u8], at: usize) -> Option<(u32, u32, u32, bool, bool)> {
    let h = u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?);
    if h >> 21 != 0x7ff {
        return None;
    }
    let version = (h >> 19) & 3; // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    let layer = (h >> 17) & 3; // 1: layer III
    let bitrate_index = ((h >> 12) & 0xf) as usize;
    let rate_index = ((h >> 10) & 3) as usize;
    if version == 1 || layer != 1 || bitrate_index == 0 || bitrate_index == 15 || rate_index == 3 {
        return None;
    }
    let mpeg1 = version == 3;
    const V1: [u32; 15] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    const V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let kbps = if mpeg1 { V1 } else { V2 }[bitrate_index];
    let base = [44_100, 48_000, 32_000][rate_index];
    let rate = match version {
        3 => base,
        2 => base / 2,
        _ => base / 4,
    };
    let mono = (h >> 6) & 3 == 3;
    Some((
        kbps * 1000,
        rate,
        if mpeg1 { 1152 } else { 576 },
        mpeg1,
        mono,
    ))
}

/// Past an ID3v2 tag, the first frame: a Xing/Info header's frame count
/// (variable bitrate), else the constant bitrate over the rest of the file.
fn mp3_duration(b: &[u8]) -> Result<Option<f64>, AudioError> {
    let corrupt = |why| AudioError::Corrupt("mp3", why);
    let mut at = 0usize;
    if b.starts_with(b"ID3") {
        let s = b.get(6..10).ok_or(corrupt("truncated ID3 tag"))?;
        let size = s
            .iter()
            .fold(0usize, |acc, x| (acc << 7) | usize::from(x & 0x7f));
        let footer = if b[5] & 0x10 != 0 { 10 } else { 0 };
        at = 10 + size + footer;
    }
    // A little padding may sit between the tag and the first frame.
    let limit = (at + 4096).min(b.len());
    let found = (at..limit).find_map(|i| mp3_frame(b, i).map(|f| (i, f)));
    let (start, (bitrate, rate, samples, mpeg1, mono)) =
        found.ok_or(corrupt("no MPEG audio frame"))?;
    let side = match (mpeg1, mono) {
        (true, false) => 32,
        (true, true) | (false, false) => 17,
        (false, true) => 9,
    };
    let xing = start + 4 + side;
    if let Some(tag) = b.get(xing..xing + 4)
        && (tag == b"Xing" || tag == b"Info")
        && let Some(flags) = u32_be(b, xing + 4)
        && flags & 1 != 0
        && let Some(frames) = u32_be(b, xing + 8)
    {
        return Ok(Some(
            f64::from(frames) * f64::from(samples) / f64::from(rate),
        ));
    }
    Ok(Some((b.len() - start) as f64 * 8.0 / f64::from(bitrate)))
}

/// The last page's granule position over the stream's sample rate (48 kHz
/// for Opus, less its pre-skip; the identification header's for Vorbis).
fn ogg_duration(b: &[u8]) -> Result<Option<f64>, AudioError> {
    let corrupt = |why| AudioError::Corrupt("ogg", why);
    let head = &b[..b.len().min(512)];
    let find = |needle: &[u8]| head.windows(needle.len()).position(|w| w == needle);
    let (rate, skip) = if let Some(i) = find(b"OpusHead") {
        (48_000u32, u16_le(b, i + 10).unwrap_or(0))
    } else if let Some(i) = find(b"\x01vorbis") {
        (
            u32_le(b, i + 12).ok_or(corrupt("truncated Vorbis header"))?,
            0,
        )
    } else if find(b"fLaC").is_some() || find(b"Speex").is_some() {
        return Ok(None);
    } else {
        return Err(corrupt("no Opus or Vorbis stream"));
    };
    if rate == 0 {
        return Err(corrupt("a sample rate of zero"));
    }
    let tail_from = b.len().saturating_sub(64 * 1024);
    let last = b[tail_from..]
        .windows(4)
        .rposition(|w| w == b"OggS")
        .map(|i| tail_from + i)
        .ok_or(corrupt("no page"))?;
    let granule = u64_le(b, last + 6).ok_or(corrupt("truncated page header"))?;
    if granule == u64::MAX {
        return Ok(None);
    }
    Ok(Some(
        granule.saturating_sub(u64::from(skip)) as f64 / f64::from(rate),
    ))
}

/// STREAMINFO: total samples over the sample rate (0 samples: unknown).
fn flac_duration(b: &[u8]) -> Result<Option<f64>, AudioError> {
    let info = b
        .get(8..8 + 34)
        .ok_or(AudioError::Corrupt("flac", "truncated STREAMINFO"))?;
    let packed = u64::from_be_bytes(
        info[10..18]
            .try_into()
            .map_err(|_| AudioError::Corrupt("flac", "truncated STREAMINFO"))?,
    );
    let rate = (packed >> 44) as u32;
    let total = packed & 0xf_ffff_ffff;
    if rate == 0 {
        return Err(AudioError::Corrupt("flac", "a sample rate of zero"));
    }
    Ok((total > 0).then(|| total as f64 / f64::from(rate)))
}

/// `moov/mvhd`: duration over time scale.
fn m4a_duration(b: &[u8]) -> Result<Option<f64>, AudioError> {
    let corrupt = |why| AudioError::Corrupt("m4a", why);
    let moov = find_box(b, 0, b.len(), b"moov").ok_or(corrupt("no moov box"))?;
    let mvhd = find_box(b, moov.0, moov.1, b"mvhd").ok_or(corrupt("no mvhd box"))?;
    let at = mvhd.0;
    let version = *b.get(at).ok_or(corrupt("truncated mvhd"))?;
    let (scale, duration) = if version == 1 {
        (u32_be(b, at + 20), u64_be(b, at + 24))
    } else {
        (u32_be(b, at + 12), u32_be(b, at + 16).map(u64::from))
    };
    let (scale, duration) = scale.zip(duration).ok_or(corrupt("truncated mvhd"))?;
    if scale == 0 {
        return Err(corrupt("a time scale of zero"));
    }
    Ok(Some(duration as f64 / f64::from(scale)))
}

/// The body (start, end) of the first box called `kind` among the boxes in
/// `from..to`.
fn find_box(b: &[u8], from: usize, to: usize, kind: &[u8; 4]) -> Option<(usize, usize)> {
    let mut at = from;
    while at + 8 <= to {
        let size = u32_be(b, at)? as u64;
        let (header, size) = match size {
            0 => (8u64, (to - at) as u64),
            1 => (16u64, u64_be(b, at + 8)?),
            n => (8u64, n),
        };
        if size < header {
            return None;
        }
        let end = at.checked_add(usize::try_from(size).ok()?)?.min(to);
        if &b[at + 4..at + 8] == kind {
            return Some((at + header as usize, end));
        }
        at = end;
    }
    None
}

/// EBML: `Segment/Info` holds `TimecodeScale` (ns per tick, default 1 ms)
/// and `Duration` (ticks, a float). Live recordings have no `Duration`.
fn webm_duration(b: &[u8]) -> Result<Option<f64>, AudioError> {
    let corrupt = |why| AudioError::Corrupt("webm", why);
    let window = &b[..b.len().min(1024 * 1024)];
    // The EBML header, then the Segment.
    let (_, header_end) = ebml_element(window, 0).ok_or(corrupt("truncated EBML header"))?;
    let (segment_id, seg_body, _) = ebml_child(window, header_end).ok_or(corrupt("no Segment"))?;
    if segment_id != 0x1853_8067 {
        return Err(corrupt("no Segment"));
    }
    let mut at = seg_body;
    while let Some((id, body, end)) = ebml_child(window, at) {
        if id == 0x1549_a966 {
            let (mut scale, mut duration) = (1_000_000u64, None);
            let mut i = body;
            while let Some((cid, cbody, cend)) = ebml_child(window, i) {
                if cend > end {
                    break;
                }
                match cid {
                    0x2a_d7b1 => {
                        scale = window[cbody..cend]
                            .iter()
                            .fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
                    }
                    0x4489 => {
                        duration = match cend - cbody {
                            4 => window[cbody..cend]
                                .try_into()
                                .ok()
                                .map(|x| f64::from(f32::from_be_bytes(x))),
                            8 => window[cbody..cend].try_into().ok().map(f64::from_be_bytes),
                            _ => return Err(corrupt("a Duration of a bad size")),
                        }
                    }
                    _ => {}
                }
                i = cend;
            }
            return Ok(duration.map(|d| d * scale as f64 / 1e9));
        }
        if id == 0x1f43_b675 {
            // A Cluster before any Info: no duration recorded.
            break;
        }
        at = end;
    }
    Ok(None)
}

/// An EBML variable-length integer at `at`: (value, length); `marker`
/// keeps the length bit (element ids keep it, sizes do not).
fn ebml_vint(b: &[u8], at: usize, marker: bool) -> Option<(u64, usize)> {
    let first = *b.get(at)?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 {
        return None;
    }
    let mut value = if marker {
        u64::from(first)
    } else {
        u64::from(first) & (0xff >> len)
    };
    for i in 1..len {
        value = (value << 8) | u64::from(*b.get(at + i)?);
    }
    Some((value, len))
}

/// The element at `at`: (end of its header, end of its body); an unknown
/// size runs to the end of the buffer.
fn ebml_element(b: &[u8], at: usize) -> Option<(usize, usize)> {
    let (_, id_len) = ebml_vint(b, at, true)?;
    let (size, size_len) = ebml_vint(b, at + id_len, false)?;
    let body = at + id_len + size_len;
    let all_ones = (1u64 << (7 * size_len)) - 1;
    let end = if size == all_ones {
        b.len()
    } else {
        body.checked_add(usize::try_from(size).ok()?)?
    };
    Some((body, end))
}

/// The element at `at` as (id, body start, body end clamped to the buffer).
fn ebml_child(b: &[u8], at: usize) -> Option<(u64, usize, usize)> {
    let (id, _) = ebml_vint(b, at, true)?;
    let (body, end) = ebml_element(b, at)?;
    (body <= b.len()).then_some((id, body, end.min(b.len())))
}

/// A WAV header whose RIFF and data sizes say what the file holds (a
/// streaming writer such as espeak-ng leaves both at their maximum).
pub fn fix_wav_sizes(bytes: &mut [u8]) {
    let len = bytes.len();
    if len < 12 || &bytes[..4] != b"RIFF" {
        return;
    }
    bytes[4..8].copy_from_slice(&((len - 8) as u32).to_le_bytes());
    let mut at = 12usize;
    while at + 8 <= len {
        let size = u32_le(bytes, at + 4).unwrap_or(0) as usize;
        if &bytes[at..at + 4] == b"data" {
            let real = (len - at - 8).min(size);
            bytes[at + 4..at + 8].copy_from_slice(&(real as u32).to_le_bytes());
            return;
        }
        at = at + 8 + size + (size & 1);
    }
}

/// A PCM WAV file of `seconds` of silence (tests and stubs).
pub fn silent_wav(seconds: f64, sample_rate: u32) -> Vec<u8> {
    let samples = (seconds * f64::from(sample_rate)) as u32;
    let data = samples * 2;
    let mut w = Vec::with_capacity(44 + data as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&sample_rate.to_le_bytes());
    w.extend_from_slice(&(sample_rate * 2).to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data.to_le_bytes());
    w.resize(44 + data as usize, 0);
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 0.01)
    }

    #[test]
    fn wav_duration_from_its_header_even_when_streamed() {
        let wav = silent_wav(2.5, 16_000);
        let info = inspect(&wav).unwrap();
        assert_eq!(info.format, AudioFormat::Wav);
        assert!(close(info.duration_secs, 2.5), "{info:?}");
        // espeak-ng's streamed header: sizes at their maximum.
        let mut streamed = wav.clone();
        streamed[4..8].copy_from_slice(&0x7fff_f024u32.to_le_bytes());
        streamed[40..44].copy_from_slice(&0x7fff_f000u32.to_le_bytes());
        assert!(close(inspect(&streamed).unwrap().duration_secs, 2.5));
        fix_wav_sizes(&mut streamed);
        assert_eq!(streamed, wav);
    }

    #[test]
    fn mp3_constant_bitrate_and_xing_frame_count() {
        // MPEG-1 layer III, 128 kb/s, 44.1 kHz, stereo: 417-byte frames.
        let frame = |i: usize| {
            let mut f = vec![0u8; 417];
            f[..4].copy_from_slice(&[0xff, 0xfb, 0x90, 0x00]);
            f[4] = i as u8;
            f
        };
        let cbr: Vec<u8> = (0..100).flat_map(frame).collect();
        let info = inspect(&cbr).unwrap();
        assert_eq!(info.format, AudioFormat::Mp3);
        assert!(close(info.duration_secs, 100.0 * 417.0 * 8.0 / 128_000.0));
        // A Xing header saying 1000 frames: 1000 * 1152 / 44100 s.
        let mut vbr = frame(0);
        vbr[36..40].copy_from_slice(b"Xing");
        vbr[40..44].copy_from_slice(&1u32.to_be_bytes());
        vbr[44..48].copy_from_slice(&1000u32.to_be_bytes());
        let mut tagged = b"ID3\x04\x00\x00\x00\x00\x00\x05abcde".to_vec();
        tagged.extend_from_slice(&vbr);
        let info = inspect(&tagged).unwrap();
        assert!(
            close(info.duration_secs, 1000.0 * 1152.0 / 44_100.0),
            "{info:?}"
        );
    }

    #[test]
    fn ogg_opus_duration_from_the_last_granule() {
        let mut ogg = b"OggS\x00\x02".to_vec();
        ogg.extend_from_slice(&[0u8; 22]);
        ogg.extend_from_slice(b"OpusHead\x01\x02");
        ogg.extend_from_slice(&312u16.to_le_bytes());
        ogg.extend_from_slice(&[0u8; 40]);
        ogg.extend_from_slice(b"OggS\x00\x04");
        ogg.extend_from_slice(&(48_000u64 * 3 + 312).to_le_bytes());
        ogg.extend_from_slice(&[0u8; 20]);
        let info = inspect(&ogg).unwrap();
        assert_eq!(info.format, AudioFormat::Ogg);
        assert!(close(info.duration_secs, 3.0), "{info:?}");
    }

    #[test]
    fn flac_and_m4a_durations() {
        let mut flac = b"fLaC\x00\x00\x00\x22".to_vec();
        let mut info = [0u8; 34];
        // 44.1 kHz, 2 channels, 16 bits, 441,000 samples: 10 s.
        let packed: u64 = (44_100u64 << 44) | (1 << 41) | (15 << 36) | 441_000;
        info[10..18].copy_from_slice(&packed.to_be_bytes());
        flac.extend_from_slice(&info);
        assert!(close(inspect(&flac).unwrap().duration_secs, 10.0));

        let mut mvhd = vec![0u8; 100];
        mvhd[12..16].copy_from_slice(&1000u32.to_be_bytes());
        mvhd[16..20].copy_from_slice(&4500u32.to_be_bytes());
        let mut m4a = Vec::new();
        m4a.extend_from_slice(&20u32.to_be_bytes());
        m4a.extend_from_slice(b"ftypM4A \x00\x00\x00\x00M4A ");
        m4a.extend_from_slice(&((8 + 8 + mvhd.len()) as u32).to_be_bytes());
        m4a.extend_from_slice(b"moov");
        m4a.extend_from_slice(&((8 + mvhd.len()) as u32).to_be_bytes());
        m4a.extend_from_slice(b"mvhd");
        m4a.extend_from_slice(&mvhd);
        let info = inspect(&m4a).unwrap();
        assert_eq!(info.format, AudioFormat::M4a);
        assert!(close(info.duration_secs, 4.5), "{info:?}");
    }

    #[test]
    fn webm_duration_and_a_live_recording_without_one() {
        let header = [0x1a, 0x45, 0xdf, 0xa3, 0x84, 0x42, 0x82, 0x81, 0x77];
        let mut info = vec![0x2a, 0xd7, 0xb1, 0x83, 0x0f, 0x42, 0x40]; // 1 ms
        info.extend_from_slice(&[0x44, 0x89, 0x88]);
        info.extend_from_slice(&7250.0f64.to_be_bytes());
        let mut webm = header.to_vec();
        webm.extend_from_slice(&[
            0x18, 0x53, 0x80, 0x67, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        webm.extend_from_slice(&[0x15, 0x49, 0xa9, 0x66, 0x80 | info.len() as u8]);
        webm.extend_from_slice(&info);
        let got = inspect(&webm).unwrap();
        assert_eq!(got.format, AudioFormat::Webm);
        assert!(close(got.duration_secs, 7.25), "{got:?}");
        // Segment straight into a Cluster: no duration, not an error.
        let mut live = header.to_vec();
        live.extend_from_slice(&[
            0x18, 0x53, 0x80, 0x67, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        live.extend_from_slice(&[0x1f, 0x43, 0xb6, 0x75, 0x81, 0x00]);
        assert_eq!(inspect(&live).unwrap().duration_secs, None);
    }

    #[test]
    fn not_audio_empty_and_corrupt_are_refused_without_panicking() {
        assert_eq!(inspect(b""), Err(AudioError::Empty));
        assert_eq!(inspect(b"<html>hello</html>"), Err(AudioError::Unsupported));
        assert_eq!(
            inspect(b"\x89PNG\r\n\x1a\n0000"),
            Err(AudioError::Unsupported)
        );
        assert!(matches!(
            inspect(b"RIFF\x00\x00\x00\x00WAVE"),
            Err(AudioError::Corrupt("wav", _))
        ));
        assert!(matches!(
            inspect(b"fLaC\x00"),
            Err(AudioError::Corrupt("flac", _))
        ));
        assert!(matches!(
            inspect(b"OggS\x00\x02"),
            Err(AudioError::Corrupt("ogg", _))
        ));
        // Every prefix of every valid file: an answer, never a panic.
        let wav = silent_wav(0.1, 8000);
        for n in 0..wav.len().min(64) {
            let _ = inspect(&wav[..n]);
        }
        let mut huge = b"RIFF\x00\x00\x00\x00WAVEfmt \xff\xff\xff\xff".to_vec();
        huge.extend_from_slice(&[0u8; 16]);
        let _ = inspect(&huge);
    }
}
