// Chat: llama.cpp's own chat code (common/chat.cpp, llama-common) run as llama-server runs it for
// /v1/chat/completions (tools/server/server-common.cpp, oaicompat_chat_params_parse): the model's
// template renders the request (common_chat_templates_apply: the Jinja engine, the per-model handlers
// such as DeepSeek-V3.2's DSML or Qwen3-Coder's XML tools, the differential auto-parser), and the
// parser that rendering builds turns the generated text back into an assistant message with its
// reasoning and tool calls (common_chat_parse).  Requests and messages cross the C API as JSON text;
// only this file sees llama.cpp's common library.
#include "chat_format.h"

#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include "chat.h"   // llama.cpp common/chat.h (csrc has no chat.h of its own)
#include "json.h"
#include "log.h"
#include "model.h"
#include "util.h"

struct mtpl_chat {
    common_chat_params params;          // the rendering: prompt, format, the parser (serialised), stops
    common_chat_parser_params parser;   // the reply's parser, loaded once
    std::string info;                   // mtpl_chat_info's text
    std::string out;                    // the last mtpl_chat_parse's text
};

namespace mtpl {

struct chat_templates {
    common_chat_templates_ptr tmpls;
    bool supports_thinking = false;     // llama-server's default for enable_thinking
    std::map<std::string, bool> caps;
};

namespace {

using json = common_json;

// llama.cpp's common library logs through a worker thread of its own, straight to stderr; the
// engine reports through status codes and its log hook instead, so common's log stays silent
// (with the threshold below every LOG_* macro returns before it starts that thread).
void quiet_common_log() {
    static std::once_flag once;
    std::call_once(once, [] { common_log_set_verbosity_thold(-1); });
}

bool get_bool(const json & req, const char * key, bool def) {
    if (!req.contains(key) || req.at(key).is_null()) {
        return def;
    }
    if (!req.at(key).is_boolean()) {
        throw std::invalid_argument(std::string("'") + key + "' must be a boolean");
    }
    return req.at(key).get<bool>();
}

std::string get_string(const json & req, const char * key, const std::string & def) {
    if (!req.contains(key) || req.at(key).is_null()) {
        return def;
    }
    if (!req.at(key).is_string()) {
        throw std::invalid_argument(std::string("'") + key + "' must be a string");
    }
    return req.at(key).get<std::string>();
}

// The model's templates, parsed on first use: a model whose template does not parse still completes.
int32_t model_templates(mtpl_model * m, chat_templates *& out) {
    std::lock_guard<std::mutex> lock(m->chat_mutex);
    if (!m->chat) {
        const char * src = llama_model_chat_template(m->model, nullptr);
        const char * src_tools = llama_model_chat_template(m->model, "tool_use");
        if (!src && !src_tools) {
            return fail(MTPL_ERR_NO_CHAT_TEMPLATE,
                        "the model file has no chat template (tokenizer.chat_template), so it cannot format chat "
                        "messages: complete a prompt you format yourself instead");
        }
        quiet_common_log();
        // common_chat_templates_init rethrows a copy of the bare std::exception; parse once here to keep
        // the Jinja parser's message
        try {
            common_chat_template probe(src ? src : src_tools, "", "");
        } catch (const std::exception & e) {
            return fail(MTPL_ERR_CHAT_TEMPLATE, std::string("the model's chat template does not parse: ") + e.what());
        }
        auto t = std::make_unique<chat_templates>();
        try {
            t->tmpls = common_chat_templates_init(m->model, "");
            t->caps = common_chat_templates_get_caps(t->tmpls.get());
        } catch (const std::exception & e) {
            return fail(MTPL_ERR_CHAT_TEMPLATE, std::string("the model's chat template does not parse: ") + e.what());
        }
        try {
            t->supports_thinking = common_chat_templates_support_enable_thinking(t->tmpls.get());
        } catch (const std::exception &) {
            t->supports_thinking = false;  // rendering a test message failed: a real request will say why
        }
        m->chat = t.release();
    }
    out = m->chat;
    return MTPL_OK;
}

// The request's fields as llama-server reads them (oaicompat_chat_params_parse), with its defaults:
// --jinja, --reasoning-format deepseek, --prefill-assistant, reasoning enabled where the template
// supports it, and the preserve_reasoning template argument on.
common_chat_templates_inputs read_request(const json & req, const chat_templates & t) {
    if (!req.contains("messages")) {
        throw std::invalid_argument("'messages' is required");
    }
    common_chat_templates_inputs in;
    in.messages = common_chat_msgs_parse_oaicompat(req.at("messages"));
    if (in.messages.empty()) {
        throw std::invalid_argument("'messages' must not be empty");
    }
    in.tools = common_chat_tools_parse_oaicompat(req.contains("tools") ? req.at("tools") : json());
    in.tool_choice = common_chat_tool_choice_parse_oaicompat(get_string(req, "tool_choice", "auto"));
    const auto par = t.caps.find("supports_parallel_tool_calls");
    in.parallel_tool_calls = get_bool(req, "parallel_tool_calls", par != t.caps.end() && par->second);

    in.add_generation_prompt = get_bool(req, "add_generation_prompt", true);
    in.continue_final_message = req.contains("continue_final_message")
                                    ? common_chat_continuation_parse(req.at("continue_final_message"))
                                    : COMMON_CHAT_CONTINUATION_NONE;
    if (in.continue_final_message == COMMON_CHAT_CONTINUATION_NONE && in.messages.back().role == "assistant") {
        if (in.messages.size() >= 2 && in.messages[in.messages.size() - 2].role == "assistant") {
            throw std::invalid_argument("Cannot have 2 or more assistant messages at the end of the list.");
        }
        in.continue_final_message = COMMON_CHAT_CONTINUATION_AUTO;
        in.add_generation_prompt = false;
    }
    if (in.continue_final_message != COMMON_CHAT_CONTINUATION_NONE && in.add_generation_prompt) {
        throw std::invalid_argument("Cannot set both add_generation_prompt and continue_final_message to true.");
    }
    if (in.continue_final_message != COMMON_CHAT_CONTINUATION_NONE && in.messages.back().role == "assistant" &&
        !in.messages.back().tool_calls.empty()) {
        throw std::invalid_argument("Cannot continue an assistant message that contains tool calls.");
    }

    in.reasoning_format = common_reasoning_format_from_name(get_string(req, "reasoning_format", "deepseek"));
    in.enable_thinking = get_bool(req, "enable_thinking", t.supports_thinking);
    in.chat_template_kwargs["preserve_reasoning"] = "true";
    if (req.contains("chat_template_kwargs") && !req.at("chat_template_kwargs").is_null()) {
        const json & kw = req.at("chat_template_kwargs");
        if (!kw.is_object()) {
            throw std::invalid_argument("'chat_template_kwargs' must be an object");
        }
        for (const auto & [key, value] : kw.items()) {
            in.chat_template_kwargs[key] = value.dump();
        }
    }
    const auto think = in.chat_template_kwargs.find("enable_thinking");
    if (think != in.chat_template_kwargs.end()) {
        if (think->second == "true") {
            in.enable_thinking = true;
        } else if (think->second == "false") {
            in.enable_thinking = false;
        } else if (!think->second.empty() && think->second[0] == '"') {
            throw std::invalid_argument("invalid type for \"enable_thinking\" (expected boolean, got string)");
        }
    }
    const std::string effort = get_string(req, "reasoning_effort", "");
    if (effort == "none") {
        in.enable_thinking = false;
        in.chat_template_kwargs.erase("reasoning_effort");
    } else if (!effort.empty()) {
        in.chat_template_kwargs["reasoning_effort"] = json(effort).dump();
    }
    return in;
}

} // namespace

void chat_templates_free(chat_templates * t) {
    delete t;
}

int32_t chat_render(mtpl_model * model, const char * request_json, mtpl_chat ** out) {
    chat_templates * t = nullptr;
    if (int32_t st = model_templates(model, t); st != MTPL_OK) {
        return st;
    }
    const json req = json::parse_no_throw(request_json);
    if (req.is_discarded() || !req.is_object()) {
        return fail(MTPL_ERR_INVALID_ARGUMENT, "the chat request is not a JSON object");
    }
    common_chat_templates_inputs in;
    try {
        in = read_request(req, *t);
    } catch (const std::exception & e) {
        return fail(MTPL_ERR_INVALID_ARGUMENT, e.what());
    }
    auto c = std::make_unique<mtpl_chat>();
    try {
        c->params = common_chat_templates_apply(t->tmpls.get(), in);
        c->parser = common_chat_parser_params(c->params);
        c->parser.reasoning_format = in.reasoning_format;
        c->parser.is_continuation = in.continue_final_message != COMMON_CHAT_CONTINUATION_NONE;
        if (!c->params.parser.empty()) {
            c->parser.parser.load(c->params.parser);
        }
    } catch (const std::exception & e) {
        return fail(MTPL_ERR_CHAT_TEMPLATE, std::string("the chat template failed on these messages: ") + e.what());
    }
    json info = json::object();
    info["prompt"] = c->params.prompt;
    info["generation_prompt"] = c->params.generation_prompt;
    info["format"] = std::string(common_chat_format_name(c->params.format));
    info["enable_thinking"] = in.enable_thinking;
    info["is_continuation"] = c->parser.is_continuation;
    info["supports_thinking"] = c->params.supports_thinking;
    info["thinking_start_tag"] = c->params.thinking_start_tag;
    info["thinking_end_tags"] = c->params.thinking_end_tags;
    info["additional_stops"] = c->params.additional_stops;
    info["preserved_tokens"] = c->params.preserved_tokens;
    info["caps"] = t->caps;
    c->info = info.dump_safe();
    *out = c.release();
    return MTPL_OK;
}

const std::string & chat_info(const mtpl_chat * chat) {
    return chat->info;
}

int32_t chat_parse(mtpl_chat * chat, const std::string & generated, bool partial, const std::string ** out) {
    common_chat_msg msg;
    try {
        msg = common_chat_parse(generated, partial, chat->parser);
    } catch (const std::exception & e) {
        return fail(MTPL_ERR_CHAT_PARSE, e.what());
    }
    chat->out = msg.to_json_oaicompat().dump_safe();
    *out = &chat->out;
    return MTPL_OK;
}

void chat_free(mtpl_chat * chat) {
    delete chat;
}

} // namespace mtpl
