/** busd's errors with their google.rpc details decoded from `grpc-status-details-bin`. */
import { status as Code, type ServiceError } from "@grpc/grpc-js";
import { Status } from "./gen/google/rpc/status.js";
import {
  ErrorInfo,
  Help,
  LocalizedMessage,
  PreconditionFailure,
  QuotaFailure,
  RetryInfo,
} from "./gen/google/rpc/error_details.js";

/** A `google.rpc.Help` link. */
export interface HelpLink {
  description: string;
  url: string;
}

const TYPE = "type.googleapis.com/google.rpc.";

/**
 * A failed busd call with what busd says about it: `code` (a grpc-js `status`), `reason`
 * (`ErrorInfo.reason`: `NOT_FOUND`, `BILLING_REQUIRED`, `QUOTA_EXHAUSTED`, ...), `guidance`
 * (`LocalizedMessage`), `helpLinks` / `helpUrl` (`Help`), `retryAfterSeconds` (`RetryInfo`),
 * and the `QuotaFailure` / `PreconditionFailure` violations.
 */
export class BusError extends Error {
  code: Code = Code.UNKNOWN;
  details = "";
  reason = "";
  domain = "";
  metadata: Record<string, string> = {};
  guidance = "";
  helpLinks: HelpLink[] = [];
  retryAfterSeconds?: number;
  quotaViolations: string[] = [];
  preconditionViolations: string[] = [];

  /** The first help link's URL, if any. */
  get helpUrl(): string | undefined {
    return this.helpLinks[0]?.url;
  }

  /** Decodes a grpc-js error (a BusError is returned as it is). */
  static from(error: unknown): BusError {
    if (error instanceof BusError) return error;
    const service = error as Partial<ServiceError>;
    const result = new BusError(service.details || service.message || String(error), { cause: error });
    result.name = "BusError";
    result.code = service.code ?? Code.UNKNOWN;
    result.details = service.details ?? "";
    for (const raw of service.metadata?.get("grpc-status-details-bin") ?? []) {
      if (typeof raw === "string") continue;
      result.apply(Status.decode(raw));
    }
    if (result.guidance) result.message = `${result.details} (${result.guidance})`;
    return result;
  }

  private apply(status: Status): void {
    for (const any of status.details) {
      switch (any.typeUrl) {
        case `${TYPE}ErrorInfo`: {
          const info = ErrorInfo.decode(any.value);
          this.reason = info.reason;
          this.domain = info.domain;
          this.metadata = info.metadata;
          break;
        }
        case `${TYPE}LocalizedMessage`:
          this.guidance = LocalizedMessage.decode(any.value).message;
          break;
        case `${TYPE}Help`:
          this.helpLinks.push(...Help.decode(any.value).links);
          break;
        case `${TYPE}RetryInfo`: {
          const delay = RetryInfo.decode(any.value).retryDelay;
          if (delay) this.retryAfterSeconds = Number(delay.seconds) + delay.nanos / 1e9;
          break;
        }
        case `${TYPE}QuotaFailure`:
          this.quotaViolations.push(...QuotaFailure.decode(any.value).violations.map((v) => v.description));
          break;
        case `${TYPE}PreconditionFailure`:
          this.preconditionViolations.push(
            ...PreconditionFailure.decode(any.value).violations.map((v) => v.description),
          );
          break;
      }
    }
  }
}
