package io.gptgrpc.client;

import gptgrpc.v1.Gateway.ConverseSummary;

/**
 * A whole streamed turn of a conversation (StreamConverse).
 *
 * @param content every delta's content, concatenated
 * @param refusal every delta's refusal, concatenated
 * @param summary the stream's last message: usage, cost, the turn's context tokens and trimmed messages, and the
 *     conversation's message count
 */
public record ConverseResult(String content, String refusal, ConverseSummary summary) {}
