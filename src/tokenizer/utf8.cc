// UTF-8 helpers and the byte-level alphabet (see utf8.h).
#include "tokenizer/utf8.h"

#include <array>

namespace qs::tokenizer {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

Utf8Char read_utf8(std::string_view s, size_t pos) {
  const uint8_t b0 = uint8_t(s[pos]);
  if (b0 < 0x80) return {Utf8Char::kValid, b0, 1};
  // Table 3-7 of the Unicode standard: the allowed range of the second byte depends on the lead byte.
  int n;  // continuation bytes
  uint8_t lo = 0x80, hi = 0xBF;
  uint32_t cp;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 1, cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 2, cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 3, cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {Utf8Char::kInvalid, 0, 1};
  }
  size_t i = 1;
  for (; i <= size_t(n); ++i) {
    if (pos + i >= s.size()) return {Utf8Char::kIncomplete, 0, i};
    const uint8_t b = uint8_t(s[pos + i]);
    if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return {Utf8Char::kInvalid, 0, i};
    cp = (cp << 6) | (b & 0x3F);
  }
  return {Utf8Char::kValid, cp, i};
}

bool is_valid_utf8(std::string_view s, size_t* bad_pos) {
  for (size_t pos = 0; pos < s.size();) {
    const Utf8Char c = read_utf8(s, pos);
    if (c.kind != Utf8Char::kValid) {
      if (bad_pos) *bad_pos = pos;
      return false;
    }
    pos += c.len;
  }
  return true;
}

std::string repair_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    const Utf8Char c = read_utf8(s, pos);
    if (c.kind == Utf8Char::kValid)
      out.append(s.substr(pos, c.len));
    else
      out += "\xEF\xBF\xBD";
    pos += c.len;
  }
  return out;
}

size_t incomplete_utf8_tail(std::string_view s) {
  // A character is at most 4 bytes, so only a lead byte among the last 3 can start an incomplete one.
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const uint8_t b = uint8_t(s[s.size() - back]);
    if (b < 0x80) return 0;
    if (b >= 0xC0) {
      const Utf8Char c = read_utf8(s, s.size() - back);
      return c.kind == Utf8Char::kIncomplete ? back : 0;
    }
  }
  return 0;
}

namespace {

struct ByteAlphabet {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 324> to_byte{};  // every code point of the alphabet is < 256 + 68
  ByteAlphabet() {
    to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? uint32_t(b) : next++;
      to_byte[to_cp[b]] = int16_t(b);
    }
  }
};

const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

}  // namespace

uint32_t byte_to_codepoint(uint8_t b) { return alphabet().to_cp[b]; }

int codepoint_to_byte(uint32_t cp) { return cp < alphabet().to_byte.size() ? alphabet().to_byte[cp] : -1; }

}  // namespace qs::tokenizer
