// Reading GGUF metadata the way llama.cpp reads it, before llama.cpp sees the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf.h"

namespace mtpl {

// a string value, "" if absent or of another type
inline std::string get_str(const gguf_context * g, const std::string & key) {
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0 || gguf_get_kv_type(g, id) != GGUF_TYPE_STRING) {
        return "";
    }
    return gguf_get_val_str(g, id);
}

// an unsigned integer of any width (or a non-negative int32); false if absent or of another type
inline bool get_uint(const gguf_context * g, const std::string & key, uint32_t & out) {
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0) {
        return false;
    }
    switch (gguf_get_kv_type(g, id)) {
        case GGUF_TYPE_UINT8:  out = gguf_get_val_u8(g, id); return true;
        case GGUF_TYPE_UINT16: out = gguf_get_val_u16(g, id); return true;
        case GGUF_TYPE_UINT32: out = gguf_get_val_u32(g, id); return true;
        case GGUF_TYPE_INT32: {
            const int32_t v = gguf_get_val_i32(g, id);
            if (v < 0) return false;
            out = (uint32_t) v;
            return true;
        }
        default: return false;
    }
}

// a key that, when present, must be an unsigned integer scalar
inline bool uint_or_absent(const gguf_context * g, const std::string & key) {
    uint32_t v = 0;
    return gguf_find_key(g, key.c_str()) < 0 || get_uint(g, key, v);
}

// whether tensor name, when the file has it, is stored as f32 (ggml's recurrent kernels read their
// parameters as f32 and assert on anything else)
inline bool f32_or_absent(const gguf_context * g, const std::string & name) {
    const int64_t id = gguf_find_tensor(g, name.c_str());
    return id < 0 || gguf_get_tensor_type(g, id) == GGML_TYPE_F32;
}

// a per-layer integer key as llama.cpp's get_key_or_arr reads it: a scalar for every block, or an
// array of exactly n_block entries; false when neither
inline bool per_layer(const gguf_context * g, const std::string & key, uint32_t n_block, std::vector<uint32_t> & out) {
    out.assign(n_block, 0);
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0) {
        return false;
    }
    if (gguf_get_kv_type(g, id) != GGUF_TYPE_ARRAY) {
        uint32_t v = 0;
        if (!get_uint(g, key, v)) return false;
        out.assign(n_block, v);
        return true;
    }
    const gguf_type t = gguf_get_arr_type(g, id);
    if (gguf_get_arr_n(g, id) != n_block || (t != GGUF_TYPE_UINT32 && t != GGUF_TYPE_INT32)) {
        return false;
    }
    const auto * v = static_cast<const int32_t *>(gguf_get_arr_data(g, id));
    for (uint32_t i = 0; i < n_block; ++i) {
        if (v[i] < 0) return false;
        out[i] = (uint32_t) v[i];
    }
    return true;
}

} // namespace mtpl
