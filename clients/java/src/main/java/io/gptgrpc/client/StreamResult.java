package io.gptgrpc.client;

import gptgrpc.v1.Gateway.ChatCompletionSummary;

/**
 * A whole streamed answer.
 *
 * @param content every delta's content, concatenated
 * @param refusal every delta's refusal, concatenated
 * @param summary the stream's last message: finish reason, usage, cost, attempts
 */
public record StreamResult(String content, String refusal, ChatCompletionSummary summary) {}
