/**
 * The safety number's QR code (PROTOCOL.md §9) as an SVG: the 65 QR bytes written as base64url
 * text, encoded by qrcode-generator (a small, dependency-free encoder; no crypto involved) and
 * drawn as one path, so it stays sharp at any size and needs no inline style.
 */

import qrcode from 'qrcode-generator';

import { toBase64Url } from '../protocol/bytes.js';
import { svg } from './dom.js';

/** The text a QR code carries for these safety-number bytes. */
export function qrText(bytes: Uint8Array): string {
  return toBase64Url(bytes);
}

/** An SVG QR code of `text`, with a quiet zone of 4 modules. */
export function qrSvg(text: string, label: string): SVGSVGElement {
  const code = qrcode(0, 'M');
  code.addData(text, 'Byte');
  code.make();
  const count = code.getModuleCount();
  const quiet = 4;
  const size = count + 2 * quiet;
  let d = '';
  for (let row = 0; row < count; row++) {
    for (let col = 0; col < count; col++) {
      if (code.isDark(row, col)) d += `M${col + quiet} ${row + quiet}h1v1h-1z`;
    }
  }
  const title = svg('title');
  title.textContent = label;
  return svg(
    'svg',
    { viewBox: `0 0 ${size} ${size}`, role: 'img', 'aria-label': label, class: 'qr', 'shape-rendering': 'crispEdges' },
    title,
    svg('rect', { width: size, height: size, class: 'qr-bg' }),
    svg('path', { d, class: 'qr-fg' }),
  );
}
