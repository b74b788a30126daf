import { useState } from "preact/hooks";
import { register, signIn, signedOutReason } from "../api";
import { Link, navigate } from "../router";
import { useStore } from "../store";
import { ErrorBox, Field, useAction } from "../ui";

export function SignIn() {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const reason = useStore(signedOutReason);
  const { busy, error, act } = useAction();
  return (
    <section class="narrow">
      <h1>Sign in</h1>
      {reason && (
        <p class="notice" role="status">
          {reason}
        </p>
      )}
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          if (await act(() => signIn(email, password))) navigate("/meetings");
        }}
      >
        <Field label="Email" name="email" type="email" autoComplete="username" required value={email} error={error} onInput={(e) => setEmail(e.currentTarget.value)} />
        <Field label="Password" name="password" type="password" autoComplete="current-password" required value={password} error={error} onInput={(e) => setPassword(e.currentTarget.value)} />
        <ErrorBox error={error} />
        <button type="submit" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
      <p>
        New here? <Link href="/register">Create an account</Link>
      </p>
    </section>
  );
}

export function Register() {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [name, setName] = useState("");
  const { busy, error, act } = useAction();
  return (
    <section class="narrow">
      <h1>Create an account</h1>
      {/* The server checks the fields (the protos' rules); its messages show by each field. */}
      <form
        noValidate
        onSubmit={async (e) => {
          e.preventDefault();
          if (await act(() => register(email, password, name))) navigate("/communities");
        }}
      >
        <Field label="Display name" name="display_name" autoComplete="nickname" value={name} error={error} onInput={(e) => setName(e.currentTarget.value)} />
        <Field label="Email" name="email" type="email" autoComplete="email" value={email} error={error} onInput={(e) => setEmail(e.currentTarget.value)} />
        <Field label="Password" name="password" type="password" autoComplete="new-password" hint="8 to 128 characters" value={password} error={error} onInput={(e) => setPassword(e.currentTarget.value)} />
        <ErrorBox error={error} />
        <button type="submit" disabled={busy}>
          {busy ? "Creating…" : "Create account"}
        </button>
      </form>
      <p>
        Have an account? <Link href="/signin">Sign in</Link>
      </p>
    </section>
  );
}
