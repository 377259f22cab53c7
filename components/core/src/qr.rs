//! A ticket's QR payload drawn as an SVG image, so pages show a scannable code without a
//! QR library of their own (`GET /api/tickets/{code}/qr.svg`).

use qrcodegen::{QrCode, QrCodeEcc};

/// Modules of light margin around the symbol: the quiet zone scanners need (ISO 18004).
const QUIET_ZONE: i32 = 4;

/// The SVG document for `payload`, one path of unit squares on a white background, sized
/// by the viewer (`viewBox` only). `None` when the payload does not fit a QR symbol, which
/// a ticket payload (under 100 ASCII characters) always does.
pub fn svg(payload: &str) -> Option<String> {
    // Medium correction survives a scratched or glared phone screen at a modest size.
    let qr = QrCode::encode_text(payload, QrCodeEcc::Medium).ok()?;
    let size = qr.size() + 2 * QUIET_ZONE;
    let mut path = String::with_capacity(qr.size() as usize * qr.size() as usize * 6);
    for y in 0..qr.size() {
        for x in 0..qr.size() {
            if qr.get_module(x, y) {
                path.push_str(&format!("M{},{}h1v1h-1z", x + QUIET_ZONE, y + QUIET_ZONE));
            }
        }
    }
    Some(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" viewBox=\"0 0 {size} {size}\" \
         shape-rendering=\"crispEdges\" role=\"img\" aria-label=\"ticket QR code\">\
         <rect width=\"100%\" height=\"100%\" fill=\"#FFFFFF\"/>\
         <path d=\"{path}\" fill=\"#000000\"/></svg>\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dark modules an SVG of [`svg`] draws, read back from its path.
    fn drawn(svg: &str) -> Vec<(i32, i32)> {
        let d = svg.split("d=\"").nth(1).unwrap().split('"').next().unwrap();
        d.split('M')
            .filter(|s| !s.is_empty())
            .map(|square| {
                let (x, rest) = square.split_once(',').unwrap();
                let y = rest.split('h').next().unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn the_image_draws_exactly_the_symbol_of_the_payload_inside_a_quiet_zone() {
        let payload = "FC1.9-AB12CD34.1.Zm9vYmFyYmF6cXV4LWxvbmdlci1obWFjLXRhZw";
        let image = svg(payload).unwrap();
        let qr = QrCode::encode_text(payload, QrCodeEcc::Medium).unwrap();
        let mut expected = Vec::new();
        for y in 0..qr.size() {
            for x in 0..qr.size() {
                if qr.get_module(x, y) {
                    expected.push((x + QUIET_ZONE, y + QUIET_ZONE));
                }
            }
        }
        assert_eq!(drawn(&image), expected);
        let side = qr.size() + 8;
        assert!(image.contains(&format!("viewBox=\"0 0 {side} {side}\"")));
        assert!(image.starts_with("<?xml") && image.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn different_payloads_draw_different_images() {
        assert_ne!(svg("FC1.1-A.1.x"), svg("FC1.1-B.1.x"));
    }

    #[test]
    fn a_payload_too_long_for_any_symbol_is_refused() {
        assert_eq!(svg(&"x".repeat(5000)), None);
    }
}
