// UTF-8 helpers shared by the tokenizer, its decoders and the streaming decoder: code point iteration,
// validation, lossy repair (each maximal invalid subpart becomes one U+FFFD, the Unicode / WHATWG rule, so
// repairing a prefix cut before a possible character start and the rest separately equals repairing the whole),
// detection of an incomplete character at the end of a byte string, and the GPT-2 byte-level alphabet
// (every byte 0..255 <-> a printable code point) used by byte-level BPE.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace qs::tokenizer {

// Appends the UTF-8 encoding of code point cp (cp must be <= 0x10FFFF).
void append_utf8(std::string& out, uint32_t cp);

// Result of reading one character at s[pos].
struct Utf8Char {
  enum Kind { kValid, kInvalid, kIncomplete } kind;
  uint32_t cp;  // the code point when kValid
  size_t len;   // bytes consumed: the character, the maximal invalid subpart (>= 1), or the incomplete tail
};
Utf8Char read_utf8(std::string_view s, size_t pos);

// True when s is well-formed UTF-8; otherwise *bad_pos (if given) is the offset of the first bad byte.
bool is_valid_utf8(std::string_view s, size_t* bad_pos = nullptr);

// s with every maximal invalid subpart (and an incomplete character at the end) replaced by U+FFFD.
std::string repair_utf8(std::string_view s);

// Length of the trailing bytes of s that form a valid but incomplete character (0..3): the part a streaming
// decoder must hold back until more bytes arrive.
size_t incomplete_utf8_tail(std::string_view s);

// GPT-2 byte-level alphabet: the code point that stands for byte b, and the byte for a code point (-1 if the
// code point is not in the alphabet).
uint32_t byte_to_codepoint(uint8_t b);
int codepoint_to_byte(uint32_t cp);

}  // namespace qs::tokenizer
