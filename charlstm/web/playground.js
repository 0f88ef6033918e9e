// The playground's source of text: the server's /v1/completions, streamed as server-sent events.
const SOURCE = {
  async *completions(body, signal) {
    const headers = { "Content-Type": "application/json" };
    if (MODEL.key_required) headers["Authorization"] = "Bearer " + $("key").value;
    const response = await fetch(MODEL.root + "/v1/completions", { method: "POST", headers, body: JSON.stringify(body), signal });
    if (!response.ok) {
      const error = await response.json().catch(() => ({ error: { message: response.statusText } }));
      throw new Error(error.error.message);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        yield* chunk.choices;
      }
    }
  },
};
