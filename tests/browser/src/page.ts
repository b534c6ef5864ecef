// The page of the browser test (tests/browser/test_browser.py): it calls the mesh the way a
// web app does, with connect-web's gRPC-web transport through Envoy, and writes what it saw
// as JSON into <pre id="result" data-done>. Settings come from the page's query string:
// envoy (Envoy's URL), user and password (a user the test created).
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { AuthService } from "./gen/revo/auth/v1/auth_pb.js";
import { EchoService } from "./gen/revo/echo/v1/echo_pb.js";

type Failure = { code: string; message: string; details: { type: string; value: string }[] };

function failure(error: unknown): Failure {
  const err = ConnectError.from(error);
  return {
    code: Code[err.code],
    message: err.rawMessage,
    // details as the server sent them (grpc-status-details-bin): type name and bytes
    details: err.details.map((detail) => ({
      type: "type" in detail ? detail.type : detail.desc.typeName,
      value: btoa(String.fromCharCode(...("value" in detail && detail.value instanceof Uint8Array
        ? detail.value : new Uint8Array()))),
    })),
  };
}

async function expectFailure(call: Promise<unknown>): Promise<Failure> {
  try {
    await call;
  } catch (error) {
    return failure(error);
  }
  throw new Error("the call succeeded; it should have failed");
}

async function run(params: URLSearchParams): Promise<Record<string, unknown>> {
  const transport = createGrpcWebTransport({ baseUrl: params.get("envoy") ?? "" });
  const auth = createClient(AuthService, transport);
  const echo = createClient(EchoService, transport);

  const unsigned = await expectFailure(echo.echo({ payload: new TextEncoder().encode("x") }));
  const login = await auth.login({
    username: params.get("user") ?? "",
    password: params.get("password") ?? "",
  });
  const headers = { authorization: `Bearer ${login.tokens?.accessToken ?? ""}` };
  const echoed = await echo.echo({ payload: new TextEncoder().encode("hello from a browser") },
    { headers });
  const counted: number[] = [];
  for await (const reply of echo.count({ count: 5, intervalMs: 20 }, { headers })) {
    counted.push(reply.index);
  }
  const invalid = await expectFailure(echo.echo({ delayMs: 60_001 }, { headers }));
  return {
    unauthenticated: unsigned,
    echo: {
      payload: new TextDecoder().decode(echoed.payload),
      caller: echoed.caller,
      role: echoed.role,
    },
    count: counted,
    invalid,
  };
}

const result = document.getElementById("result") as HTMLElement;
run(new URLSearchParams(location.search)).then(
  (report) => { result.textContent = JSON.stringify(report); },
  (error: unknown) => {
    result.textContent = JSON.stringify({ error: String(error), stack: (error as Error)?.stack });
  },
).finally(() => { result.dataset.done = "1"; });
