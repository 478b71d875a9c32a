// Chat: rendering a request with the model's chat template and parsing the reply, by llama.cpp's own
// chat code (common/chat.cpp).  The one file of the engine that includes llama.cpp's common library.
#pragma once

#include <cstdint>
#include <string>

extern "C" {
#include "mtpllama.h"
}

namespace mtpl {

struct chat_templates;

// free a model's parsed chat template (null: nothing)
void chat_templates_free(chat_templates * t);
// render request_json (see mtpl_chat_render) with the model's template
int32_t chat_render(mtpl_model * model, const char * request_json, mtpl_chat ** out);
// the rendering as JSON text (see mtpl_chat_info)
const std::string & chat_info(const mtpl_chat * chat);
// parse generated text into the assistant message; *out points into chat (valid until the next call)
int32_t chat_parse(mtpl_chat * chat, const std::string & generated, bool partial, const std::string ** out);
void chat_free(mtpl_chat * chat);

} // namespace mtpl
