import { crc32 } from 'node:zlib';

/**
 * One prefix-cache block on disk: a fixed header, then the block's bytes as the pool lays
 * them out (KvBlockPool.readSlot). The header names what wrote it (the fingerprint) and
 * which block it is (the key), and carries a checksum of itself and of the payload, so a
 * torn, truncated or edited file is told apart from a whole one before it is served.
 */

const MAGIC = Buffer.from('Q3KVBLK1', 'latin1');
export const HEADER_BYTES = 96;
const FINGERPRINT_AT = 24;
const KEY_AT = 56;
const HEADER_CRC_AT = 88;

export interface BlockHeader {
  /** Positions the block holds. */
  tokens: number;
  /** 32 bytes: what computed it (export_fingerprint.ts). */
  fingerprint: Uint8Array;
  /** 32 bytes: the block's disk key. */
  key: Uint8Array;
}

/** Fills `file`'s header for the payload already in `file` after HEADER_BYTES. */
export function sealBlock(file: Uint8Array, header: BlockHeader): void {
  const view = Buffer.from(file.buffer, file.byteOffset, HEADER_BYTES);
  const payload = file.subarray(HEADER_BYTES);
  view.fill(0);
  MAGIC.copy(view, 0);
  view.writeUInt32LE(header.tokens, 8);
  view.writeUInt32LE(payload.byteLength, 12);
  view.writeUInt32LE(crc32(payload), 16);
  view.set(header.fingerprint, FINGERPRINT_AT);
  view.set(header.key, KEY_AT);
  view.writeUInt32LE(crc32(view.subarray(0, HEADER_CRC_AT)), HEADER_CRC_AT);
}

/**
 * The payload of a block file read whole into `file`, or why it cannot be served: a
 * header or payload that fails its checksum, a length that is not the one expected, or
 * a block of another fingerprint or key than asked for.
 */
export function openBlock(
  file: Uint8Array,
  expect: { fingerprint: Uint8Array; key: Uint8Array; payloadBytes: number },
): { tokens: number; payload: Uint8Array } | string {
  if (file.byteLength !== HEADER_BYTES + expect.payloadBytes) return `${file.byteLength} bytes, not ${HEADER_BYTES + expect.payloadBytes}`;
  const view = Buffer.from(file.buffer, file.byteOffset, HEADER_BYTES);
  if (!view.subarray(0, MAGIC.length).equals(MAGIC)) return 'not a block file';
  if (view.readUInt32LE(HEADER_CRC_AT) !== crc32(view.subarray(0, HEADER_CRC_AT))) return 'header checksum mismatch';
  if (!view.subarray(FINGERPRINT_AT, FINGERPRINT_AT + 32).equals(expect.fingerprint)) return 'written by another export or setting';
  if (!view.subarray(KEY_AT, KEY_AT + 32).equals(expect.key)) return 'another block';
  if (view.readUInt32LE(12) !== expect.payloadBytes) return 'payload length mismatch';
  const payload = file.subarray(HEADER_BYTES);
  if (view.readUInt32LE(16) !== crc32(payload)) return 'payload checksum mismatch';
  return { tokens: view.readUInt32LE(8), payload };
}
