//! Reading and writing image files.
//!
//! [`decode`] turns untrusted bytes into a [`DecodedImage`]: an 8-bit RGB working copy, plus
//! what is needed to write the result in the same colour type as the source (grayscale, alpha).
//! It is the engine's only door for image data, so it is also where hostile input is stopped:
//! the encoded size is checked first, the format is sniffed from the magic bytes (never trusted
//! from a file name or a content type), and the pixel count is read from the header and refused
//! before any pixel memory is allocated.
//!
//! [`output_image`] and [`encode`] go the other way.

use std::fmt;
use std::io::Cursor;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::str::FromStr;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::metadata::Orientation;
use image::{
    DynamicImage, GrayAlphaImage, GrayImage, ImageDecoder, ImageEncoder, ImageError, ImageFormat,
    ImageReader, RgbImage, RgbaImage,
};
use outpaint_canvas::{CanvasPlan, Limits};

use crate::EngineError;

/// JPEG quality of encoded results: visually lossless for photos at a reasonable size.
pub const JPEG_QUALITY: u8 = 92;

/// Largest number of bytes per pixel a decoder may produce (16-bit RGBA); used to size the
/// decoder's memory limit from the pixel limit.
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// Memory a decoder may use beyond the decoded pixels (line buffers, metadata chunks).
const DECODER_SLACK_BYTES: u64 = 64 * 1024 * 1024;

/// An input image, decoded and ready to be planned and expanded.
#[derive(Clone, PartialEq)]
pub struct DecodedImage {
    /// The pixels as 8-bit RGB, upright (EXIF orientation applied). Every backend works on
    /// this copy, and its pixels are the ones the result keeps exactly inside the original's box.
    pub rgb: RgbImage,
    /// Whether the source had no colour channels (L or LA); the result is then grayscale too.
    pub grayscale: bool,
    /// The source's alpha channel, if it had one; the result keeps it inside the box and is
    /// opaque outside.
    pub alpha: Option<GrayImage>,
    /// The format the data was in.
    pub format: ImageFormat,
    /// The source's embedded ICC colour profile, if any; results carry it over when it fits
    /// their colour type, so colours look the same as in the source (wide-gamut phone photos).
    pub icc_profile: Option<Vec<u8>>,
}

impl fmt::Debug for DecodedImage {
    /// A summary: the pixels would fill a log (or a failed test's output) with megabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecodedImage")
            .field("width", &self.width())
            .field("height", &self.height())
            .field("grayscale", &self.grayscale)
            .field("alpha", &self.alpha.is_some())
            .field("format", &self.format)
            .field(
                "icc_profile_bytes",
                &self.icc_profile.as_ref().map(Vec::len),
            )
            .finish()
    }
}

impl DecodedImage {
    /// An opaque colour image that did not come from a file (tests, in-memory callers).
    pub fn from_rgb(rgb: RgbImage) -> Self {
        DecodedImage {
            rgb,
            grayscale: false,
            alpha: None,
            format: ImageFormat::Png,
            icc_profile: None,
        }
    }

    /// Width of the image in pixels.
    pub fn width(&self) -> u32 {
        self.rgb.width()
    }

    /// Height of the image in pixels.
    pub fn height(&self) -> u32 {
        self.rgb.height()
    }
}

/// Decodes a JPEG, PNG or WebP image within `limits`.
///
/// In order: the encoded size is checked against `limits.max_file_bytes`; the format is
/// sniffed from the magic bytes (anything else is [`EngineError::UnsupportedFormat`]); the
/// header's width × height is checked against [`Limits::max_image_pixels`] before pixels are
/// allocated ([`EngineError::ImageTooLarge`]); the decoder then runs under `image::Limits`
/// derived from the same numbers as a second guard. Corrupt or truncated data is an
/// [`EngineError::Decode`], never a panic. 16-bit images are converted to 8 bits and the EXIF
/// orientation, if any, is applied.
///
/// Minimum side and aspect ratio are not checked here; [`outpaint_canvas::plan`] does that.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<DecodedImage, EngineError> {
    limits.check_file_size(bytes.len() as u64)?;
    let format = sniff(bytes)?;
    // The decoders are fuzzed upstream, but one panicking on some malformed file must not take
    // a server worker or a whole batch down with it: treat a panic as undecodable data.
    panic::catch_unwind(AssertUnwindSafe(|| decode_sniffed(bytes, format, limits))).unwrap_or_else(
        |_| {
            Err(EngineError::Decode {
                format: format_name(format),
                message: "the decoder failed on malformed data".to_string(),
            })
        },
    )
}

fn decode_sniffed(
    bytes: &[u8],
    format: ImageFormat,
    limits: &Limits,
) -> Result<DecodedImage, EngineError> {
    let name = format_name(format);
    let decode_error = |e: ImageError| decode_error(name, e);
    let max_pixels = limits.max_image_pixels();

    // Opening the decoder parses the header only. No dimension limit yet, so that an
    // oversized image gets the pixel-count error below rather than a decoder limit error.
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decoder_limits(max_pixels, None));
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(EngineError::ImageTooLarge {
            width,
            height,
            megapixels: pixels as f64 / 1e6,
            max_megapixels: max_pixels as f64 / 1e6,
        });
    }
    if pixels == 0 {
        return Err(EngineError::Decode {
            format: name,
            message: format!("the image is {width}×{height} px"),
        });
    }
    // Second guard: the decoder itself refuses to go beyond what the header promised.
    decoder
        .set_limits(decoder_limits(max_pixels, Some((width, height))))
        .map_err(decode_error)?;
    // A malformed EXIF block is not worth refusing the image for: keep it as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    // Likewise a malformed profile: drop it and decode the pixels as they are.
    let icc_profile = decoder.icc_profile().ok().flatten();
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    // The JPEG decoder fills a truncated scan with grey instead of failing; that grey would
    // then be kept as "original" pixels. Refuse, as most tools do.
    if format == ImageFormat::Jpeg && !jpeg_reaches_end(bytes) {
        return Err(EngineError::Decode {
            format: name,
            message: "the data is truncated (no end-of-image marker)".to_string(),
        });
    }
    image.apply_orientation(orientation);

    let colour = image.color();
    let grayscale = !colour.has_color();
    let alpha = colour.has_alpha().then(|| alpha_plane(&image));
    Ok(DecodedImage {
        rgb: image.into_rgb8(),
        grayscale,
        alpha,
        format,
        icc_profile,
    })
}

/// `image::Limits` for a decoder: strict dimensions when they are known from the header, and
/// memory for the largest accepted image at 16-bit RGBA.
fn decoder_limits(max_pixels: u64, dimensions: Option<(u32, u32)>) -> image::Limits {
    let mut limits = image::Limits::default();
    if let Some((width, height)) = dimensions {
        limits.max_image_width = Some(width);
        limits.max_image_height = Some(height);
    }
    limits.max_alloc = Some(
        max_pixels
            .saturating_mul(MAX_BYTES_PER_PIXEL)
            .saturating_add(DECODER_SLACK_BYTES),
    );
    limits
}

fn alpha_plane(image: &DynamicImage) -> GrayImage {
    match image {
        DynamicImage::ImageLumaA8(la) => GrayImage::from_fn(la.width(), la.height(), |x, y| {
            image::Luma([la.get_pixel(x, y)[1]])
        }),
        other => {
            let rgba = other.to_rgba8();
            GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
                image::Luma([rgba.get_pixel(x, y)[3]])
            })
        }
    }
}

fn decode_error(format: &'static str, error: ImageError) -> EngineError {
    let message = match &error {
        ImageError::Limits(_) => {
            format!("it needs more memory to decode than allowed ({error})")
        }
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the data is truncated".to_string()
        }
        _ => error.to_string(),
    };
    EngineError::Decode { format, message }
}

/// Whether a JPEG's segments, followed from the start of the file, reach the end-of-image
/// marker. Segments are skipped by their length (so an EXIF thumbnail's own markers do not
/// count) and entropy-coded data is scanned for the next marker.
fn jpeg_reaches_end(bytes: &[u8]) -> bool {
    const EOI: u8 = 0xd9;
    const SOS: u8 = 0xda;
    let mut i = 2; // after SOI
    loop {
        // Tolerate stray bytes before a marker, as libjpeg does, and any 0xff fill bytes.
        let Some(offset) = bytes[i.min(bytes.len())..].iter().position(|&b| b == 0xff) else {
            return false;
        };
        i += offset;
        while bytes.get(i) == Some(&0xff) {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            EOI => return true,
            // Standalone markers without a length: TEM and RST0..RST7.
            0x01 | 0xd0..=0xd7 => continue,
            _ => {}
        }
        let Some(length) = bytes.get(i..i + 2) else {
            return false;
        };
        i += usize::from(u16::from_be_bytes([length[0], length[1]]));
        if marker == SOS {
            // Entropy-coded data: 0xff is followed by 0x00 (a stuffed byte) or a restart
            // marker; anything else is the next segment's marker.
            loop {
                let Some(offset) = bytes[i.min(bytes.len())..].iter().position(|&b| b == 0xff)
                else {
                    return false;
                };
                i += offset;
                match bytes.get(i + 1) {
                    None => return false,
                    Some(0x00 | 0xd0..=0xd7) => i += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

/// The accepted formats by magic bytes; anything else is named as well as it can be.
fn sniff(bytes: &[u8]) -> Result<ImageFormat, EngineError> {
    let detected = match image::guess_format(bytes) {
        Ok(format @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => {
            return Ok(format);
        }
        Ok(other) => format_name(other).to_string(),
        Err(_) => describe_unknown(bytes).to_string(),
    };
    Err(EngineError::UnsupportedFormat { detected })
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::Ico => "ICO",
        ImageFormat::Avif => "AVIF",
        ImageFormat::Hdr => "Radiance HDR",
        ImageFormat::OpenExr => "OpenEXR",
        ImageFormat::Pnm => "PNM",
        ImageFormat::Dds => "DDS",
        ImageFormat::Qoi => "QOI",
        ImageFormat::Farbfeld => "farbfeld",
        ImageFormat::Tga => "TGA",
        _ => "an image format",
    }
}

/// A name for data that `image` does not recognise: common non-image files, else text or binary.
fn describe_unknown(bytes: &[u8]) -> &'static str {
    if bytes.is_empty() {
        return "an empty file";
    }
    // ISO base media files: `....ftyp<brand>`.
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return match &bytes[8..12] {
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" | b"mif1" | b"msf1" => {
                "HEIC/HEIF"
            }
            b"avis" => "AVIF",
            _ => "a video or ISO media file",
        };
    }
    if bytes.starts_with(b"%PDF") {
        return "PDF";
    }
    let head = &bytes[..bytes.len().min(512)];
    let trimmed = head.trim_ascii_start();
    if trimmed.starts_with(b"<svg") || (trimmed.starts_with(b"<?xml") && contains(head, b"<svg")) {
        return "SVG";
    }
    if trimmed.starts_with(b"<") {
        return "HTML or XML text";
    }
    let text = match std::str::from_utf8(head) {
        Ok(text) => text,
        // A multi-byte character cut at the 512-byte boundary is still text.
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).expect("valid_up_to marks a valid prefix")
        }
        Err(_) => return "unrecognised binary data",
    };
    if text.chars().all(|c| !c.is_control() || c.is_whitespace()) {
        "text"
    } else {
        "unrecognised binary data"
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The format of encoded results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum OutputFormat {
    /// PNG: lossless, the default; the original's pixels are kept bit for bit.
    #[default]
    Png,
    /// JPEG at quality 92: smaller files, lossy everywhere (also inside the original's box).
    #[cfg_attr(feature = "clap", value(alias = "jpg"))]
    Jpeg,
    /// WebP, lossless.
    Webp,
}

impl OutputFormat {
    /// Every format, in the order they are listed to users.
    pub const ALL: [OutputFormat; 3] = [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp];

    /// The name used in requests and flags: `png`, `jpeg`, `webp`.
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Webp => "webp",
        }
    }

    /// The usual file extension, without the dot: `png`, `jpg`, `webp`.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Webp => "webp",
        }
    }

    /// The MIME type of encoded results.
    pub fn mime_type(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Webp => "image/webp",
        }
    }

    /// The format a file extension (without the dot, any case) stands for, if it is one of ours.
    pub fn from_extension(extension: &str) -> Option<Self> {
        match extension.to_ascii_lowercase().as_str() {
            "png" => Some(OutputFormat::Png),
            "jpg" | "jpeg" => Some(OutputFormat::Jpeg),
            "webp" => Some(OutputFormat::Webp),
            _ => None,
        }
    }

    /// The format named by a path's extension, if it has one of ours.
    pub fn from_path(path: &Path) -> Option<Self> {
        path.extension()
            .and_then(|e| e.to_str())
            .and_then(Self::from_extension)
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OutputFormat {
    type Err = EngineError;

    /// Parses `png`, `jpeg`, `jpg` or `webp`, ignoring case and surrounding whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OutputFormat::from_extension(s.trim()).ok_or_else(|| EngineError::InvalidParameter {
            name: "output_format",
            rule: "png, jpeg or webp".to_string(),
            value: format!("\"{s}\""),
        })
    }
}

/// The image to write for a finished canvas: the same colour type as the source.
///
/// - grayscale source: L8 (or LA8 with alpha). Inside the box R = G = B, and the luma
///   conversion's weights sum to exactly one, so the original's grey values come back exactly;
/// - source with alpha: the original's alpha inside the box, opaque outside;
/// - otherwise RGB8, as is.
pub fn output_image(canvas: RgbImage, source: &DecodedImage, plan: &CanvasPlan) -> DynamicImage {
    let colour = DynamicImage::ImageRgb8(canvas);
    let Some(alpha) = &source.alpha else {
        return if source.grayscale {
            DynamicImage::ImageLuma8(colour.into_luma8())
        } else {
            colour
        };
    };
    let o = plan.original;
    let alpha_at = |x: u32, y: u32| {
        if o.contains(x, y) {
            alpha.get_pixel(x - o.x, y - o.y)[0]
        } else {
            u8::MAX
        }
    };
    if source.grayscale {
        let luma = colour.into_luma8();
        DynamicImage::ImageLumaA8(GrayAlphaImage::from_fn(plan.width, plan.height, |x, y| {
            image::LumaA([luma.get_pixel(x, y)[0], alpha_at(x, y)])
        }))
    } else {
        let rgb = colour.into_rgb8();
        DynamicImage::ImageRgba8(RgbaImage::from_fn(plan.width, plan.height, |x, y| {
            let [r, g, b] = rgb.get_pixel(x, y).0;
            image::Rgba([r, g, b, alpha_at(x, y)])
        }))
    }
}

/// Encodes an image as PNG (fast compression), JPEG (quality [`JPEG_QUALITY`]; alpha is
/// dropped, as JPEG has none) or lossless WebP.
pub fn encode(image: &DynamicImage, format: OutputFormat) -> Result<Vec<u8>, EngineError> {
    encode_with_icc_profile(image, format, None)
}

/// [`encode`], embedding `icc_profile` when it fits what is written: an RGB profile for colour
/// output, a GRAY one for grayscale output. Any other profile (CMYK from a print JPEG, GRAY for
/// WebP, which stores grey as RGB) is left out rather than written wrong.
pub fn encode_with_icc_profile(
    image: &DynamicImage,
    format: OutputFormat,
    icc_profile: Option<&[u8]>,
) -> Result<Vec<u8>, EngineError> {
    // JPEG has no alpha; WebP has no grayscale mode (its encoder writes grey as RGB).
    let written = match (format, image) {
        (OutputFormat::Jpeg, DynamicImage::ImageLumaA8(_)) => {
            DynamicImage::ImageLuma8(image.to_luma8())
        }
        (OutputFormat::Jpeg, DynamicImage::ImageRgba8(_)) => {
            DynamicImage::ImageRgb8(image.to_rgb8())
        }
        _ => image.clone(),
    };
    let stored_as_gray = !written.color().has_color() && format != OutputFormat::Webp;
    let profile = icc_profile
        .filter(|p| icc_colour_space(p) == Some(if stored_as_gray { *b"GRAY" } else { *b"RGB " }));

    let mut out = Vec::with_capacity(written.as_bytes().len() / 2);
    let result = match format {
        // Fast deflate: results are written once and served a few times; a smaller file is
        // not worth seconds per image here.
        OutputFormat::Png => with_profile(
            PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive),
            profile,
            &written,
        ),
        OutputFormat::Jpeg => with_profile(
            JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY),
            profile,
            &written,
        ),
        OutputFormat::Webp => with_profile(WebPEncoder::new_lossless(&mut out), profile, &written),
    };
    result.map_err(|e| EngineError::Encode {
        format: format.name(),
        message: e.to_string(),
    })?;
    Ok(out)
}

/// Adds a UTF-8 text entry (an `iTXt` chunk) to an encoded PNG, just before its end, where
/// image viewers and tools such as `exiftool` or A1111-style readers find it. `keyword` is 1–79
/// Latin-1 characters without NUL. Bytes that do not end in a PNG `IEND` chunk are left as
/// they are.
pub fn add_png_text(png: &mut Vec<u8>, keyword: &str, text: &str) {
    const IEND_LEN: usize = 12;
    if png.len() < 8 + IEND_LEN || &png[png.len() - 8..png.len() - 4] != b"IEND" {
        return;
    }
    // Keyword, NUL, uncompressed (0, 0), empty language tag and translated keyword (NUL, NUL).
    let mut data = Vec::with_capacity(keyword.len() + 5 + text.len());
    data.extend_from_slice(keyword.as_bytes());
    data.extend_from_slice(&[0, 0, 0, 0, 0]);
    data.extend_from_slice(text.as_bytes());
    let Ok(length) = u32::try_from(data.len()) else {
        return;
    };
    let mut chunk = Vec::with_capacity(data.len() + 12);
    chunk.extend_from_slice(&length.to_be_bytes());
    chunk.extend_from_slice(b"iTXt");
    chunk.extend_from_slice(&data);
    chunk.extend_from_slice(&crc32fast::hash(&chunk[4..]).to_be_bytes());
    let at = png.len() - IEND_LEN;
    png.splice(at..at, chunk);
}

fn with_profile(
    mut encoder: impl ImageEncoder,
    profile: Option<&[u8]>,
    image: &DynamicImage,
) -> image::ImageResult<()> {
    if let Some(profile) = profile {
        encoder
            .set_icc_profile(profile.to_vec())
            .map_err(ImageError::Unsupported)?;
    }
    image.write_with_encoder(encoder)
}

/// The data colour space of an ICC profile (header bytes 16..20: `RGB `, `GRAY`, `CMYK`, ...),
/// if the data is long enough to be one.
fn icc_colour_space(profile: &[u8]) -> Option<[u8; 4]> {
    let signature = profile.get(36..40)?;
    if signature != b"acsp" {
        return None;
    }
    profile.get(16..20)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Luma, LumaA, Rgb, Rgba};
    use outpaint_canvas::{Expansion, plan};

    fn photo(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x ^ y) % 256) as u8,
            ])
        })
    }

    fn png_bytes(image: &DynamicImage) -> Vec<u8> {
        encode(image, OutputFormat::Png).unwrap()
    }

    #[test]
    fn decodes_png_exactly() {
        let rgb = photo(320, 300);
        let decoded = decode(&png_bytes(&rgb.clone().into()), &Limits::default()).unwrap();
        assert_eq!(decoded.rgb, rgb);
        assert!(!decoded.grayscale);
        assert_eq!(decoded.alpha, None);
        assert_eq!(decoded.format, ImageFormat::Png);
    }

    #[test]
    fn decodes_jpeg() {
        let rgb = photo(320, 300);
        let bytes = encode(&rgb.into(), OutputFormat::Jpeg).unwrap();
        assert_eq!(&bytes[..3], &[0xff, 0xd8, 0xff]);
        let decoded = decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(decoded.rgb.dimensions(), (320, 300));
        assert_eq!(decoded.format, ImageFormat::Jpeg);
        assert!(!decoded.grayscale);
    }

    #[test]
    fn webp_round_trip_is_lossless() {
        let rgb = photo(310, 305);
        let bytes = encode(&rgb.clone().into(), OutputFormat::Webp).unwrap();
        assert_eq!(&bytes[8..12], b"WEBP");
        let decoded = decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(decoded.rgb, rgb);
        assert_eq!(decoded.format, ImageFormat::WebP);
    }

    #[test]
    fn decodes_grayscale() {
        let gray = GrayImage::from_fn(300, 300, |x, y| Luma([((x + y) % 256) as u8]));
        let decoded = decode(&png_bytes(&gray.clone().into()), &Limits::default()).unwrap();
        assert!(decoded.grayscale);
        assert_eq!(decoded.alpha, None);
        let v = gray.get_pixel(10, 20)[0];
        assert_eq!(decoded.rgb.get_pixel(10, 20).0, [v, v, v]);
    }

    #[test]
    fn decodes_rgba_and_keeps_alpha() {
        let rgba = RgbaImage::from_fn(300, 300, |x, y| Rgba([x as u8, y as u8, 7, (x / 2) as u8]));
        let decoded = decode(&png_bytes(&rgba.clone().into()), &Limits::default()).unwrap();
        assert!(!decoded.grayscale);
        let alpha = decoded.alpha.expect("alpha plane");
        assert_eq!(alpha.get_pixel(200, 3)[0], 100);
        assert_eq!(decoded.rgb.get_pixel(200, 3).0, [200, 3, 7]);
    }

    #[test]
    fn converts_16_bit_to_8_bit() {
        let wide = image::ImageBuffer::<Rgb<u16>, Vec<u16>>::from_fn(300, 300, |x, _| {
            Rgb([(x % 256) as u16 * 257, 65535, 0])
        });
        let decoded = decode(&png_bytes(&wide.into()), &Limits::default()).unwrap();
        assert_eq!(decoded.rgb.get_pixel(100, 0).0, [100, 255, 0]);
        let gray16 =
            image::ImageBuffer::<Luma<u16>, Vec<u16>>::from_pixel(300, 300, Luma([257 * 9]));
        let decoded = decode(&png_bytes(&gray16.into()), &Limits::default()).unwrap();
        assert!(decoded.grayscale);
        assert_eq!(decoded.rgb.get_pixel(0, 0).0, [9, 9, 9]);
    }

    #[test]
    fn truncated_file_is_a_decode_error() {
        let bytes = png_bytes(&photo(300, 300).into());
        for cut in [bytes.len() / 2, 40, 9] {
            let err = decode(&bytes[..cut], &Limits::default()).unwrap_err();
            assert!(
                matches!(err, EngineError::Decode { format: "PNG", .. }),
                "{err}"
            );
            assert!(err.is_invalid_input());
        }
        let jpeg = encode(&photo(300, 300).into(), OutputFormat::Jpeg).unwrap();
        for cut in [jpeg.len() - 2, jpeg.len() / 3, 100, 3] {
            let err = decode(&jpeg[..cut], &Limits::default()).unwrap_err();
            assert!(
                matches!(err, EngineError::Decode { format: "JPEG", .. }),
                "{err}"
            );
        }
        let webp = encode(&photo(300, 300).into(), OutputFormat::Webp).unwrap();
        for cut in [webp.len() - 8, webp.len() / 2, 30, 12] {
            let err = decode(&webp[..cut], &Limits::default()).unwrap_err();
            assert!(
                matches!(err, EngineError::Decode { format: "WebP", .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn jpeg_with_trailing_data_and_a_thumbnail_is_complete() {
        let thumbnail = encode(&photo(8, 8).into(), OutputFormat::Jpeg).unwrap();
        let mut bytes = Vec::new();
        let mut encoder = JpegEncoder::new_with_quality(&mut bytes, 90);
        // An APP1 payload that holds a whole JPEG, EOI included, as EXIF thumbnails do.
        encoder.set_exif_metadata(thumbnail.clone()).unwrap();
        let rgb = photo(300, 300);
        encoder
            .write_image(rgb.as_raw(), 300, 300, image::ExtendedColorType::Rgb8)
            .unwrap();
        assert!(jpeg_reaches_end(&bytes));
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"trailing vendor data");
        assert!(decode(&trailing, &Limits::default()).is_ok());
        // Cut inside the scan: the thumbnail's EOI must not count.
        let cut = &bytes[..bytes.len() - 200];
        assert!(!jpeg_reaches_end(cut));
    }

    macro_rules! unsupported {
        ($name:ident, $bytes:expr, $detected:expr) => {
            #[test]
            fn $name() {
                let err = decode($bytes, &Limits::default()).unwrap_err();
                match &err {
                    EngineError::UnsupportedFormat { detected } => assert_eq!(detected, $detected),
                    other => panic!("unexpected {other:?}"),
                }
                assert!(
                    err.to_string().contains("expected JPEG, PNG or WebP"),
                    "{err}"
                );
            }
        };
    }

    unsupported!(
        gif_is_refused,
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
        "GIF"
    );
    unsupported!(bmp_is_refused, b"BM\x1e\x00\x00\x00\x00\x00", "BMP");
    unsupported!(text_is_refused, b"hello, this is not an image\n", "text");
    unsupported!(empty_is_refused, b"", "an empty file");
    unsupported!(
        binary_is_refused,
        &[0u8, 1, 2, 3, 250, 251, 7, 0],
        "unrecognised binary data"
    );
    unsupported!(
        heic_is_named,
        b"\0\0\0\x18ftypheic\0\0\0\0mif1heic",
        "HEIC/HEIF"
    );
    unsupported!(
        html_is_named,
        b"  <!DOCTYPE html><html></html>",
        "HTML or XML text"
    );

    /// A valid PNG whose IHDR was patched to declare `width × height`, CRC fixed.
    fn png_declaring(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = png_bytes(&photo(4, 4).into());
        // Signature (8), IHDR length (4), "IHDR" (4), then width and height.
        assert_eq!(&bytes[12..16], b"IHDR");
        bytes[16..20].copy_from_slice(&width.to_be_bytes());
        bytes[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32fast::hash(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    #[test]
    fn decompression_bomb_is_refused_from_the_header() {
        let err = decode(&png_declaring(100_000, 100_000), &Limits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::ImageTooLarge {
                    width: 100_000,
                    height: 100_000,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "image is 100000×100000 px (10000.0 megapixels); at most 16 megapixels are accepted"
        );
        assert!(err.is_invalid_input());
    }

    #[test]
    fn header_that_lies_is_a_decode_error() {
        // Within the pixel limit, but the data holds 4×4 pixels only.
        let err = decode(&png_declaring(1000, 1000), &Limits::default()).unwrap_err();
        assert!(matches!(err, EngineError::Decode { .. }), "{err:?}");
    }

    #[test]
    fn file_size_is_checked_first() {
        let limits = Limits {
            max_file_bytes: 100,
            ..Limits::default()
        };
        let err = decode(&[0u8; 101], &limits).unwrap_err();
        assert!(matches!(err, EngineError::Canvas(_)), "{err:?}");
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 300×320 JPEG tagged "rotate 90° clockwise" decodes as 320×300.
        let mut bytes = Vec::new();
        let mut encoder = JpegEncoder::new_with_quality(&mut bytes, 90);
        // EXIF: TIFF header (little endian), one IFD entry: Orientation (0x0112) = 6.
        let exif = [
            b'I', b'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0,
            0,
        ];
        encoder.set_exif_metadata(exif.to_vec()).unwrap();
        let rgb = photo(300, 320);
        encoder
            .write_image(rgb.as_raw(), 300, 320, image::ExtendedColorType::Rgb8)
            .unwrap();
        let decoded = decode(&bytes, &Limits::default()).unwrap();
        assert_eq!(decoded.rgb.dimensions(), (320, 300));
    }

    /// A minimal ICC profile header for the data colour space `space`: enough for decoders to
    /// carry it and for [`icc_colour_space`] to read it.
    fn fake_profile(space: &[u8; 4]) -> Vec<u8> {
        let mut profile = vec![0u8; 132];
        profile[0..4].copy_from_slice(&132u32.to_be_bytes());
        profile[16..20].copy_from_slice(space);
        profile[36..40].copy_from_slice(b"acsp");
        profile
    }

    fn profile_of(bytes: &[u8]) -> Option<Vec<u8>> {
        decode(bytes, &Limits::default()).unwrap().icc_profile
    }

    /// The `iTXt` entries of a PNG, each chunk's CRC checked.
    fn png_texts(png: &[u8]) -> Vec<(String, String)> {
        let mut texts = Vec::new();
        let mut at = 8;
        while at + 12 <= png.len() {
            let length = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let chunk = &png[at + 4..at + 8 + length];
            let crc =
                u32::from_be_bytes(png[at + 8 + length..at + 12 + length].try_into().unwrap());
            assert_eq!(
                crc,
                crc32fast::hash(chunk),
                "CRC of a {:?} chunk",
                &chunk[..4]
            );
            if &chunk[..4] == b"iTXt" {
                let data = &chunk[4..];
                let nul = data.iter().position(|&b| b == 0).unwrap();
                let keyword = String::from_utf8(data[..nul].to_vec()).unwrap();
                let text = String::from_utf8(data[nul + 5..].to_vec()).unwrap();
                texts.push((keyword, text));
            }
            at += 12 + length;
        }
        texts
    }

    #[test]
    fn png_text_is_a_valid_chunk_and_the_image_still_decodes() {
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 30, Rgb([9, 80, 200])));
        let mut png = encode(&image, OutputFormat::Png).unwrap();
        add_png_text(&mut png, "parameters", "une grange rouge, 夕焼け\nSeed: 7");
        assert_eq!(
            png_texts(&png),
            vec![(
                "parameters".to_string(),
                "une grange rouge, 夕焼け\nSeed: 7".to_string()
            )]
        );
        assert_eq!(image::load_from_memory(&png).unwrap(), image);
        // Not a PNG: left alone.
        let mut jpeg = encode(&image, OutputFormat::Jpeg).unwrap();
        let before = jpeg.clone();
        add_png_text(&mut jpeg, "parameters", "x");
        assert_eq!(jpeg, before);
    }

    #[test]
    fn icc_profile_is_carried_over_when_it_fits() {
        let rgb_profile = fake_profile(b"RGB ");
        let mut png = Vec::new();
        let mut encoder = PngEncoder::new(&mut png);
        encoder.set_icc_profile(rgb_profile.clone()).unwrap();
        let rgb = photo(300, 300);
        encoder
            .write_image(rgb.as_raw(), 300, 300, image::ExtendedColorType::Rgb8)
            .unwrap();
        let source = decode(&png, &Limits::default()).unwrap();
        assert_eq!(source.icc_profile.as_deref(), Some(&rgb_profile[..]));
        let image = DynamicImage::ImageRgb8(source.rgb.clone());
        for format in OutputFormat::ALL {
            let bytes =
                encode_with_icc_profile(&image, format, source.icc_profile.as_deref()).unwrap();
            assert_eq!(
                profile_of(&bytes).as_deref(),
                Some(&rgb_profile[..]),
                "{format}"
            );
        }
        // A profile for another colour space is left out.
        let gray = DynamicImage::ImageLuma8(GrayImage::new(300, 300));
        let bytes = encode_with_icc_profile(&gray, OutputFormat::Png, Some(&rgb_profile)).unwrap();
        assert_eq!(profile_of(&bytes), None);
        let gray_profile = fake_profile(b"GRAY");
        let bytes = encode_with_icc_profile(&gray, OutputFormat::Png, Some(&gray_profile)).unwrap();
        assert_eq!(profile_of(&bytes), Some(gray_profile.clone()));
        let bytes =
            encode_with_icc_profile(&gray, OutputFormat::Webp, Some(&gray_profile)).unwrap();
        assert_eq!(profile_of(&bytes), None);
        let cmyk = fake_profile(b"CMYK");
        let bytes = encode_with_icc_profile(&image, OutputFormat::Jpeg, Some(&cmyk)).unwrap();
        assert_eq!(profile_of(&bytes), None);
    }

    #[test]
    fn output_formats_parse_and_guess() {
        assert_eq!("png".parse::<OutputFormat>().unwrap(), OutputFormat::Png);
        assert_eq!("JPG".parse::<OutputFormat>().unwrap(), OutputFormat::Jpeg);
        assert_eq!(" jpeg".parse::<OutputFormat>().unwrap(), OutputFormat::Jpeg);
        assert_eq!("webp".parse::<OutputFormat>().unwrap(), OutputFormat::Webp);
        let err = "gif".parse::<OutputFormat>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "output_format must be png, jpeg or webp, got \"gif\""
        );
        assert_eq!(
            OutputFormat::from_path(Path::new("a/b.JPEG")),
            Some(OutputFormat::Jpeg)
        );
        assert_eq!(OutputFormat::from_path(Path::new("b.tiff")), None);
        assert_eq!(OutputFormat::from_path(Path::new("b")), None);
        for f in OutputFormat::ALL {
            assert_eq!(OutputFormat::from_extension(f.extension()), Some(f));
            assert_eq!(f.to_string().parse::<OutputFormat>().unwrap(), f);
        }
    }

    fn plan_300() -> CanvasPlan {
        let e = Expansion::uniform("right".parse().unwrap(), 1.5).unwrap();
        plan(300, 300, &e, &Limits::default()).unwrap()
    }

    #[test]
    fn grayscale_output_keeps_the_box_exact() {
        let p = plan_300();
        let gray = GrayImage::from_fn(300, 300, |x, y| Luma([((x * 3 + y) % 256) as u8]));
        let source = decode(&png_bytes(&gray.clone().into()), &Limits::default()).unwrap();
        let mut canvas = RgbImage::from_pixel(p.width, p.height, Rgb([10, 200, 30]));
        outpaint_canvas::composite::paste_original(&mut canvas, &source.rgb, &p);
        let out = output_image(canvas, &source, &p);
        assert_eq!(out.color(), image::ColorType::L8);
        for format in OutputFormat::ALL {
            let back = decode(&encode(&out, format).unwrap(), &Limits::default()).unwrap();
            // WebP has no grayscale mode: it stores R = G = B.
            assert_eq!(back.grayscale, format != OutputFormat::Webp, "{format}");
            if format != OutputFormat::Jpeg {
                let luma = DynamicImage::ImageRgb8(back.rgb).into_luma8();
                for (x, y, px) in gray.enumerate_pixels() {
                    assert_eq!(luma.get_pixel(x, y), px);
                }
            }
        }
    }

    #[test]
    fn alpha_output_is_opaque_outside_the_box() {
        let p = plan_300();
        let rgba = RgbaImage::from_fn(300, 300, |x, y| Rgba([x as u8, y as u8, 0, 40]));
        let source = decode(&png_bytes(&rgba.into()), &Limits::default()).unwrap();
        let canvas = outpaint_canvas::composite::place(&source.rgb, &p);
        let out = output_image(canvas, &source, &p);
        let png = decode(
            &encode(&out, OutputFormat::Png).unwrap(),
            &Limits::default(),
        )
        .unwrap();
        let alpha = png.alpha.expect("alpha kept");
        assert_eq!(alpha.get_pixel(10, 10)[0], 40);
        assert_eq!(alpha.get_pixel(420, 10)[0], 255);
        let webp = decode(
            &encode(&out, OutputFormat::Webp).unwrap(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(webp.alpha.expect("alpha kept"), alpha);
        let jpeg = decode(
            &encode(&out, OutputFormat::Jpeg).unwrap(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(jpeg.alpha, None);

        // Grayscale with alpha stays grayscale with alpha.
        let la = GrayAlphaImage::from_pixel(300, 300, LumaA([90, 10]));
        let source = decode(&png_bytes(&la.into()), &Limits::default()).unwrap();
        assert!(source.grayscale);
        let out = output_image(
            outpaint_canvas::composite::place(&source.rgb, &p),
            &source,
            &p,
        );
        assert_eq!(out.color(), image::ColorType::La8);
        let jpeg = decode(
            &encode(&out, OutputFormat::Jpeg).unwrap(),
            &Limits::default(),
        )
        .unwrap();
        assert!(jpeg.grayscale);
    }

    mod fuzz {
        //! Decoding untrusted bytes: corrupted, truncated or random files are errors a client
        //! can act on (bad input), never a panic.

        use super::*;
        use proptest::prelude::*;
        use std::sync::OnceLock;

        /// A small valid file of each accepted format.
        fn samples() -> &'static [Vec<u8>] {
            static SAMPLES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
            SAMPLES.get_or_init(|| {
                let image: DynamicImage = photo(40, 30).into();
                OutputFormat::ALL
                    .iter()
                    .map(|&format| encode(&image, format).unwrap())
                    .collect()
            })
        }

        fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
            if let Err(err) = decode(bytes, &Limits::default()) {
                prop_assert!(err.is_invalid_input(), "{err}");
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1500))]

            #[test]
            fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                check(&bytes)?;
            }

            #[test]
            fn corrupted_files(
                which in 0usize..3,
                flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
                truncate in any::<bool>(),
            ) {
                let mut bytes = samples()[which].clone();
                for (at, value) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = value;
                }
                if truncate {
                    bytes.truncate(cut.index(bytes.len()));
                }
                check(&bytes)?;
            }
        }
    }
}
